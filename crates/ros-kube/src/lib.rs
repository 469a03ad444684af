//! The k3s-like cluster's server side: the API server over HTTPS (`server`), its HTTP handling
//! (`api`), the object operations (`objects`) over the store seam (`store`), and what they use:
//! the resource table, selectors, patches, field validation, Tables, certificates and auth.

pub mod agent;
pub mod api;
pub mod auth;
pub mod client;
pub mod controllers;
pub mod etcd;
pub mod join;
pub mod objects;
pub mod patch;
pub mod pki;
pub mod proto;
pub mod quantity;
pub mod resources;
pub mod select;
pub mod server;
pub mod store;
pub mod table;
pub mod validate;
