//! Read/write classification of SQL. Built in the `classify` work branch.
