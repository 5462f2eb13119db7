//! The entity directory: entities of some types fetched from where the organisation
//! keeps them (DynamoDB tables: users, lines of business, teams) instead of files, one
//! table per entity type, cached in the sidecar.
//!
//! [`mapping`] turns a table's items into entities; [`cache`] fetches what a request
//! needs, in batches, once at a time per key, and keeps it for a TTL, with negative
//! entries and a bounded staleness when a table cannot be read; [`dynamo`] reads the
//! tables from DynamoDB; [`gather`] collects what one request reaches.

pub mod cache;
pub mod dynamo;
pub mod gather;
pub mod mapping;

pub use cache::{Answer, CachePolicy, DirectoryCache, DirectoryError, Fetched, ReadError, TableReader};
pub use gather::{Directory, GatherError, Gathered, gather};
pub use mapping::{AttributeMapping, AttributeValue, Item, MappingError, ParentMapping, TableMapping, ValueKind};
