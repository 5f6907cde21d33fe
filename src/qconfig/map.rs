//! [`QConfigMap`]: which [`QConfig`] each node of a graph gets (PyTorch's `QConfigMapping`).

use regex::Regex;

use super::QConfig;
use crate::graph::Graph;
use crate::{Error, Result};

/// Assigns a [`QConfig`] (or `None`: keep in float) to every node of a graph.
///
/// Like PyTorch's `QConfigMapping`, later and more specific entries win: the global entry, then
/// an entry for the node's layer type or op kind (`"Conv2d"`, `"Linear"`, `"add"`, `"cat"`), then
/// a regex over module paths, then a module path. A module path entry applies to that module and
/// everything inside it; the longest matching path wins, so a child falls back to its parent's
/// entry.
///
/// Nodes with parameters belong to their layer's path (`layer1.0.conv1`); other nodes (a
/// functional add, a ReLU module) to the module around the layer that produced their input
/// (`layer1.0`), since Burn records no path for modules without parameters.
///
/// ```
/// use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
///
/// let map = QConfigMap::global(QConfig::preset(Engine::X86))
///     .module("fc", None)                                   // keep the classifier in float
///     .module("layer4", QConfig::preset(Engine::Qnnpack))
///     .layer_type("add", QConfig::preset(Engine::Fbgemm));
/// ```
///
/// A key that matches nothing in the model is an error naming the key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QConfigMap {
    global: Option<QConfig>,
    layer_types: Vec<(String, Option<QConfig>)>,
    regexes: Vec<(String, Option<QConfig>)>,
    modules: Vec<(String, Option<QConfig>)>,
}

impl QConfigMap {
    /// A map whose global entry is `qconfig` (`None`: everything stays float unless an entry
    /// below says otherwise).
    pub fn global(qconfig: impl Into<Option<QConfig>>) -> Self {
        QConfigMap {
            global: qconfig.into(),
            ..Self::default()
        }
    }

    /// Sets the entry for module path `path` and everything inside it.
    pub fn module(mut self, path: &str, qconfig: impl Into<Option<QConfig>>) -> Self {
        self.modules.push((path.to_string(), qconfig.into()));
        self
    }

    /// Sets the entry for a layer type (`"Conv2d"`, `"Linear"`) or an op kind (`"add"`,
    /// `"cat"`, `"max_pool2d"`, as the graph listing names ops).
    pub fn layer_type(mut self, name: &str, qconfig: impl Into<Option<QConfig>>) -> Self {
        self.layer_types.push((name.to_string(), qconfig.into()));
        self
    }

    /// Sets the entry for every module path that the regular expression `pattern` matches
    /// (anchored at neither end, as `Regex::is_match`).
    pub fn module_regex(mut self, pattern: &str, qconfig: impl Into<Option<QConfig>>) -> Self {
        self.regexes.push((pattern.to_string(), qconfig.into()));
        self
    }

    /// The [`QConfig`] of every node of `graph`, in node order, after checking that every key
    /// matches something.
    pub fn resolve(&self, graph: &Graph) -> Result<Vec<Option<QConfig>>> {
        let scopes = graph.scopes();
        let kinds: Vec<[String; 2]> = graph
            .nodes
            .iter()
            .map(|n| {
                [
                    n.op.kind(),
                    n.module
                        .as_ref()
                        .map(|m| m.layer.clone())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        let regexes = self
            .regexes
            .iter()
            .map(|(pattern, q)| {
                let re = Regex::new(pattern).map_err(|e| Error::QConfigKey {
                    kind: "module_regex",
                    key: pattern.clone(),
                    reason: format!("is not a valid regular expression: {e}"),
                })?;
                Ok((pattern, re, q))
            })
            .collect::<Result<Vec<_>>>()?;

        let unknown = |kind: &'static str, key: &str, examples: Vec<&str>| {
            let mut examples: Vec<&str> = examples.into_iter().filter(|e| !e.is_empty()).collect();
            examples.sort_unstable();
            examples.dedup();
            examples.truncate(12);
            Error::QConfigKey {
                kind,
                key: key.to_string(),
                reason: format!(
                    "matches nothing in the model (known: {})",
                    examples.join(", ")
                ),
            }
        };
        for (key, _) in &self.modules {
            if !scopes.iter().any(|s| within(s, key)) {
                return Err(unknown(
                    "module",
                    key,
                    scopes.iter().map(String::as_str).collect(),
                ));
            }
        }
        for (key, _) in &self.layer_types {
            if !kinds.iter().any(|k| k.contains(key)) {
                return Err(unknown(
                    "layer_type",
                    key,
                    kinds.iter().flatten().map(String::as_str).collect(),
                ));
            }
        }
        for (pattern, re, _) in &regexes {
            if !scopes.iter().any(|s| re.is_match(s)) {
                return Err(unknown(
                    "module_regex",
                    pattern,
                    scopes.iter().map(String::as_str).collect(),
                ));
            }
        }

        Ok(scopes
            .iter()
            .zip(&kinds)
            .map(|(scope, kind)| {
                let mut chosen = &self.global;
                if let Some((_, q)) = self
                    .layer_types
                    .iter()
                    .rev()
                    .find(|(k, _)| kind.contains(k))
                {
                    chosen = q;
                }
                if let Some((_, _, q)) = regexes.iter().rev().find(|(_, re, _)| re.is_match(scope))
                {
                    chosen = q;
                }
                let by_module = self
                    .modules
                    .iter()
                    .enumerate()
                    .filter(|(_, (key, _))| within(scope, key))
                    .max_by_key(|(i, (key, _))| (key.len(), *i));
                if let Some((_, (_, q))) = by_module {
                    chosen = q;
                }
                chosen.clone()
            })
            .collect())
    }
}

/// Whether module path `scope` is `key` or inside it (`""` is the root, which holds everything).
fn within(scope: &str, key: &str) -> bool {
    key.is_empty()
        || scope == key
        || (scope.len() > key.len()
            && scope.starts_with(key)
            && scope.as_bytes()[key.len()] == b'.')
}
