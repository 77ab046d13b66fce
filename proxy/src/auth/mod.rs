//! Client authentication (proxy as server) and server authentication (proxy
//! as client). Built in the `auth` work branch.
