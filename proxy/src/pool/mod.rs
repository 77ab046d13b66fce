//! Server connections: opening them ([`connect`]) and, later, pooling them
//! per (node, user, database) with bb8. Sits between the router and the
//! servers in the flow `client → frontend → router → pool → server`.

pub mod connect;
