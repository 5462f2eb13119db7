//! The entity directory: entities of some types fetched from where the organisation
//! keeps them (DynamoDB tables: users, lines of business, teams) instead of files, one
//! table per entity type, cached in the sidecar.
//!
//! [`mapping`] turns a table's items into entities; [`cache`] fetches what a request
//! needs, in batches, once at a time per key, and keeps it for a TTL, with negative
//! entries and a bounded staleness when a table cannot be read; [`dynamo`] reads the
//! tables from DynamoDB.

pub mod cache;
pub mod dynamo;
pub mod mapping;

pub use cache::{CachePolicy, DirectoryCache, DirectoryError, ReadError, TableReader};
pub use mapping::{AttributeMapping, AttributeValue, Item, MappingError, ParentMapping, TableMapping, ValueKind};
