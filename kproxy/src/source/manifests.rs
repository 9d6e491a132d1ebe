//! Standard Kubernetes YAML (or JSON) manifests in a file or a directory: `v1` Service,
//! `discovery.k8s.io/v1` EndpointSlice, `v1` Node, several documents per file, `v1` List.
//!
//! Each document is parsed on its own (a YAML parser finds where documents begin and end), so
//! one malformed document is reported with its file, position and number and skipped while the
//! rest of the file still counts.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::{
    model::object_name,
    problem::{Problem, ProblemKind},
};

mod yaml;

/// Everything read from the manifests at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// Nodes (the agent uses the one named like its node).
    pub nodes: Vec<Node>,
    pub problems: Vec<Problem>,
    /// Object name (`Kind namespace/name`) → where it was defined, for problem reports.
    pub origins: HashMap<String, String>,
}

/// Files a directory contributes: `*.yaml`, `*.yml`, `*.json`, not hidden, sorted by name
/// (like `kubectl apply -f DIR`, not recursive).
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        // A single file; that it is missing is an error of the path, not an empty cluster.
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            p.is_file() && !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every manifest under `path` at once (the agent tracks changes with
/// `files::ManifestSource`; this is the same, read one time).
pub fn read_path(path: &Path) -> Snapshot {
    let mut source = super::files::ManifestSource::new(path);
    source.refresh();
    source.snapshot()
}

/// Parses one manifest text (`file` names it in problem reports; a `.json` name selects the
/// JSON parser).
pub fn parse_str(text: &str, file: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    parse_into(text, file, &mut snapshot);
    dedup_last_wins(&mut snapshot);
    snapshot
}

/// Parses all documents of one file into `snapshot`. JSON files (one document, possibly a
/// `List`) go through serde_json, much faster than YAML for the big files of large clusters.
fn parse_into(text: &str, file: &str, snapshot: &mut Snapshot) {
    if Path::new(file).extension().is_some_and(|e| e == "json") {
        let origin = format!("{file}:1");
        match JsonDocument::parse(text) {
            Ok(document) => add_object(document, &origin, snapshot),
            Err(e) => snapshot.problems.push(
                Problem::new(
                    ProblemKind::Parse,
                    format!("not valid JSON: {e}; file skipped"),
                )
                .origin(origin),
            ),
        }
        return;
    }
    for document in yaml::documents(text) {
        let origin = format!("{file}:{}", document.line);
        match document.value() {
            Ok(serde_json::Value::Null) => {}
            Ok(value) => add_object(value, &origin, snapshot),
            Err(e) => snapshot.problems.push(
                Problem::new(
                    ProblemKind::Parse,
                    format!(
                        "document {} is not valid YAML: {e}; document skipped",
                        document.number
                    ),
                )
                .origin(origin),
            ),
        }
    }
}

/// A parsed document, YAML or JSON: enough to dispatch on its kind and deserialize it.
trait Document: Sized {
    fn field(&self, name: &str) -> Option<&str>;
    fn items(self) -> Vec<Self>;
    fn into_object<T: serde::de::DeserializeOwned>(self) -> Result<T, String>;
    /// `metadata.namespace` and `metadata.name` when they are strings, whatever else is wrong
    /// with the document: a problem with it can then name the object.
    fn names(&self) -> (Option<String>, Option<String>);
}

/// A YAML document, read as JSON.
impl Document for serde_json::Value {
    fn field(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(serde_json::Value::as_str)
    }

    fn items(self) -> Vec<Self> {
        match self {
            Self::Object(mut m) => match m.remove("items") {
                Some(Self::Array(items)) => items,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn into_object<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_value(self).map_err(|e| e.to_string())
    }

    fn names(&self) -> (Option<String>, Option<String>) {
        let field = |name: &str| {
            self.get("metadata")
                .and_then(|m| m.get(name))
                .and_then(serde_json::Value::as_str)
                .map(ToOwned::to_owned)
        };
        (field("namespace"), field("name"))
    }
}

/// A JSON document, kept as text: only the fields that say what it is are parsed up front,
/// the object itself straight into its type (no intermediate JSON tree, which matters for the
/// big manifests of large clusters).
struct JsonDocument<'a> {
    text: &'a str,
    meta: TypeMeta<'a>,
}

/// The fields of any Kubernetes object that say what it is, and a List's items, unparsed.
#[derive(Default, serde::Deserialize)]
struct TypeMeta<'a> {
    #[serde(rename = "apiVersion", default, borrow)]
    api_version: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a serde_json::value::RawValue>>,
    /// Unparsed: read only for a problem's object name.
    #[serde(default, borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// The names in an object's metadata.
#[derive(serde::Deserialize)]
struct Names {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl<'a> JsonDocument<'a> {
    fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        Ok(Self {
            text,
            meta: serde_json::from_str(text)?,
        })
    }
}

impl Document for JsonDocument<'_> {
    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "apiVersion" => self.meta.api_version.as_deref(),
            "kind" => self.meta.kind.as_deref(),
            _ => None,
        }
    }

    fn items(self) -> Vec<Self> {
        self.meta
            .items
            .unwrap_or_default()
            .into_iter()
            // An item that is not even an object shows up as "a document without kind".
            .map(|raw| {
                Self::parse(raw.get()).unwrap_or(Self {
                    text: raw.get(),
                    meta: TypeMeta::default(),
                })
            })
            .collect()
    }

    fn into_object<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_str(self.text).map_err(|e| e.to_string())
    }

    fn names(&self) -> (Option<String>, Option<String>) {
        self.meta
            .metadata
            .and_then(|m| serde_json::from_str::<Names>(m.get()).ok())
            .map_or((None, None), |n| (n.namespace, n.name))
    }
}

fn add_object(value: impl Document, origin: &str, snapshot: &mut Snapshot) {
    let api_version = value.field("apiVersion").unwrap_or("").to_owned();
    let kind = value.field("kind").unwrap_or("").to_owned();
    let problem =
        |kind: ProblemKind, msg: String| Problem::new(kind, msg).origin(origin.to_owned());
    // What an object that does not decode is called, from the names it gives itself.
    let (namespace, name) = value.names();
    let invalid = |kind: &str, e: String| {
        let name = name.as_deref().unwrap_or("<unnamed>");
        let object = if kind == "Node" {
            node_object_name(name)
        } else {
            format!(
                "{kind} {}/{name}",
                namespace.as_deref().unwrap_or("default")
            )
        };
        problem(ProblemKind::Parse, format!("invalid {kind}: {e}; skipped")).object(object)
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => match value.into_object::<Service>() {
            Ok(mut svc) => {
                svc.metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                register(snapshot, object_name("Service", &svc.metadata), origin);
                snapshot.services.push(svc);
            }
            Err(e) => snapshot.problems.push(invalid("Service", e)),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => match value.into_object::<EndpointSlice>() {
            Ok(mut slice) => {
                slice
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                register(
                    snapshot,
                    object_name("EndpointSlice", &slice.metadata),
                    origin,
                );
                snapshot.slices.push(slice);
            }
            Err(e) => snapshot.problems.push(invalid("EndpointSlice", e)),
        },
        ("v1", "Node") => match value.into_object::<Node>() {
            Ok(node) => {
                register(snapshot, node_name(&node), origin);
                snapshot.nodes.push(node);
            }
            Err(e) => snapshot.problems.push(invalid("Node", e)),
        },
        ("v1", "List") => {
            for (i, item) in value.items().into_iter().enumerate() {
                add_object(item, &format!("{origin} item {i}"), snapshot);
            }
        }
        _ => {
            let what = if kind.is_empty() {
                "a document without kind".to_owned()
            } else {
                format!("{api_version} {kind}")
            };
            let mut p = problem(
                ProblemKind::UnknownKind,
                format!("{what} is not handled by kproxy; skipped"),
            );
            if let (Some(name), false) = (&name, kind.is_empty()) {
                p = p.object(match &namespace {
                    Some(namespace) => format!("{kind} {namespace}/{name}"),
                    None => format!("{kind} {name}"),
                });
            }
            snapshot.problems.push(p);
        }
    }
}

/// `Node name`: Nodes have no namespace.
pub fn node_name(node: &Node) -> String {
    node_object_name(node.metadata.name.as_deref().unwrap_or("<unnamed>"))
}

/// How problems name the Node called `name`.
pub fn node_object_name(name: &str) -> String {
    format!("Node {name}")
}

/// Remembers where an object was defined; a second definition replaces the first, as a
/// later `kubectl apply` would, and is reported.
fn register(snapshot: &mut Snapshot, object: String, origin: &str) {
    if let Some(first) = snapshot.origins.insert(object.clone(), origin.to_owned()) {
        snapshot.problems.push(
            Problem::new(
                ProblemKind::Conflict,
                format!("defined again (first at {first}); the later definition wins"),
            )
            .object(object)
            .origin(origin.to_owned()),
        );
    }
}

/// Drops all but the last definition of each object (see `register`).
fn dedup_last_wins(snapshot: &mut Snapshot) {
    fn keep_last<T>(items: &mut Vec<T>, name: impl Fn(&T) -> String) {
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            last.insert(name(item), i);
        }
        let mut i = 0;
        items.retain(|item| {
            let keep = last.get(&name(item)) == Some(&i);
            i += 1;
            keep
        });
    }
    keep_last(&mut snapshot.services, |s| {
        object_name("Service", &s.metadata)
    });
    keep_last(&mut snapshot.slices, |s| {
        object_name("EndpointSlice", &s.metadata)
    });
    keep_last(&mut snapshot.nodes, node_name);
}

#[cfg(test)]
mod tests;
