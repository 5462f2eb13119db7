//! Route matching with matchit (axum's router): method + canonical path → the route and
//! its path parameters. Built once from the config; conflicting templates are a config
//! error, not a runtime surprise.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::config::RouteConfig;

#[derive(Debug)]
pub struct Router {
    /// One matchit tree per method.
    by_method: HashMap<Method, matchit::Router<Arc<RouteConfig>>>,
}

/// A matched route and its decoded path parameters.
#[derive(Debug)]
pub struct Matched {
    pub route: Arc<RouteConfig>,
    pub params: Vec<(String, String)>,
}

impl Matched {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Two route templates that cannot both be matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route `{route}` ({method} {path}): {reason}")]
pub struct RouteConflict {
    pub route: String,
    pub method: String,
    pub path: String,
    pub reason: String,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Result<Self, RouteConflict> {
        let mut by_method: HashMap<Method, matchit::Router<Arc<RouteConfig>>> = HashMap::new();
        for route in routes {
            by_method
                .entry(route.method.clone())
                .or_default()
                .insert(route.path.clone(), Arc::new(route.clone()))
                .map_err(|e| RouteConflict {
                    route: route.name.clone(),
                    method: route.method.to_string(),
                    path: route.path.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Self { by_method })
    }

    /// The route for a method and a canonical (decoded) path.
    pub fn find(&self, method: &Method, path: &str) -> Option<Matched> {
        let found = self.by_method.get(method)?.at(path).ok()?;
        let params = found.params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Some(Matched { route: found.value.clone(), params })
    }
}
