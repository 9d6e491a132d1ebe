//! Tracking a manifests path over time: re-reads only the files that changed (by size,
//! modification time and inode) and turns what changed in them into object changes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use k8s_openapi::api::core::v1::Node;

use super::manifests::{Snapshot, manifest_files, node_object_name, parse_str};
use crate::{
    model::{Change, KeptService, KeptSlice, ObjectKey, object_key},
    problem::{Problem, ProblemKind},
};

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        })
    }
}

struct TrackedFile {
    stamp: Stamp,
    /// The objects as the model keeps them, shared with it: the agent holds one copy of
    /// each, and none of the objects as read.
    services: HashMap<ObjectKey, Arc<KeptService>>,
    slices: HashMap<ObjectKey, Arc<KeptSlice>>,
    nodes: HashMap<String, Arc<Node>>,
    problems: Vec<Problem>,
    /// Object name → where in the file it is defined.
    origins: HashMap<String, String>,
}

impl TrackedFile {
    fn load(path: &Path, stamp: Stamp) -> Self {
        let name = path.display().to_string();
        let contents = match std::fs::read_to_string(path) {
            Ok(text) => parse_str(&text, &name),
            Err(e) => Snapshot {
                problems: vec![
                    Problem::new(ProblemKind::Read, format!("cannot read: {e}")).origin(name),
                ],
                ..Snapshot::default()
            },
        };
        Self {
            stamp,
            services: contents
                .services
                .iter()
                .map(|s| {
                    let key = object_key(&s.metadata);
                    let kept = Arc::new(KeptService::of(&key, s));
                    (key, kept)
                })
                .collect(),
            slices: contents
                .slices
                .iter()
                .map(|s| (object_key(&s.metadata), Arc::new(KeptSlice::of(s))))
                .collect(),
            nodes: contents
                .nodes
                .into_iter()
                .map(|n| (n.metadata.name.clone().unwrap_or_default(), Arc::new(n)))
                .collect(),
            problems: contents.problems,
            origins: contents.origins,
        }
    }
}

/// Keys of objects a refresh may have changed.
#[derive(Default)]
struct Touched {
    services: BTreeSet<ObjectKey>,
    slices: BTreeSet<ObjectKey>,
    nodes: bool,
}

impl Touched {
    fn add(&mut self, file: &TrackedFile) {
        self.services.extend(file.services.keys().cloned());
        self.slices.extend(file.slices.keys().cloned());
        self.nodes |= !file.nodes.is_empty();
    }
}

/// The objects a manifests path defines, kept up to date by `refresh`.
pub struct ManifestSource {
    path: PathBuf,
    /// In name order: a later file's definition of an object wins (as later applies would).
    files: BTreeMap<PathBuf, TrackedFile>,
    /// The definitions handed out so far.
    services: HashMap<ObjectKey, Arc<KeptService>>,
    slices: HashMap<ObjectKey, Arc<KeptSlice>>,
    /// The Node whose changes are handed out (the agent's own), and its definition.
    node_name: Option<String>,
    node: Option<Arc<Node>>,
    /// Objects defined in more than one file, by object name.
    duplicates: HashMap<String, Problem>,
    listing_problem: Option<Problem>,
}

impl ManifestSource {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            files: BTreeMap::new(),
            services: HashMap::new(),
            slices: HashMap::new(),
            node_name: None,
            node: None,
            duplicates: HashMap::new(),
            listing_problem: None,
        }
    }

    /// Also hands out changes of the Node named `name` (`Change::Node`).
    pub fn with_node(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_owned());
        self
    }

    /// Re-reads the files that changed since the last call and returns the resulting object
    /// changes. When the path cannot be listed nothing changes (a transient error must not
    /// wipe the services) and the problem is reported.
    pub fn refresh(&mut self) -> Vec<Change> {
        let listed = match manifest_files(&self.path) {
            Ok(files) => files,
            Err(e) => {
                self.listing_problem = Some(
                    Problem::new(ProblemKind::Read, format!("cannot list manifests: {e}"))
                        .origin(self.path.display().to_string()),
                );
                return Vec::new();
            }
        };
        self.listing_problem = None;
        let mut touched = Touched::default();
        let listed_set: BTreeSet<&PathBuf> = listed.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed_set.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(old) = self.files.remove(&path) {
                touched.add(&old);
            }
        }
        for path in listed {
            match Stamp::of(&path) {
                // Vanished between listing and stat: not there this time.
                Err(_) => {
                    if let Some(old) = self.files.remove(&path) {
                        touched.add(&old);
                    }
                }
                Ok(stamp) if self.files.get(&path).is_some_and(|f| f.stamp == stamp) => {}
                Ok(stamp) => {
                    let new = TrackedFile::load(&path, stamp);
                    touched.add(&new);
                    if let Some(old) = self.files.insert(path, new) {
                        touched.add(&old);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        for key in touched.services {
            let winner = self.winner(&key, |f| &f.services);
            self.note_duplicates(format!("Service {key}"), |f| f.services.contains_key(&key));
            if self.services.get(&key) != winner.as_ref() {
                match &winner {
                    Some(s) => self.services.insert(key.clone(), s.clone()),
                    None => self.services.remove(&key),
                };
                changes.push(Change::Service(key, winner));
            }
        }
        for key in touched.slices {
            let winner = self.winner(&key, |f| &f.slices);
            self.note_duplicates(format!("EndpointSlice {key}"), |f| {
                f.slices.contains_key(&key)
            });
            if self.slices.get(&key) != winner.as_ref() {
                match &winner {
                    Some(s) => self.slices.insert(key.clone(), s.clone()),
                    None => self.slices.remove(&key),
                };
                changes.push(Change::Slice(key, winner));
            }
        }
        if let Some(name) = self.node_name.clone().filter(|_| touched.nodes) {
            let winner = self.winner(&name, |f| &f.nodes);
            self.note_duplicates(node_object_name(&name), |f| f.nodes.contains_key(&name));
            if self.node != winner {
                self.node.clone_from(&winner);
                changes.push(Change::Node(winner));
            }
        }
        changes
    }

    /// The definition of `key` in the last file that has one.
    fn winner<K: Eq + std::hash::Hash, T: Clone>(
        &self,
        key: &K,
        objects: impl Fn(&TrackedFile) -> &HashMap<K, T>,
    ) -> Option<T> {
        self.files
            .values()
            .rev()
            .find_map(|f| objects(f).get(key))
            .cloned()
    }

    /// Reports object `name` (`Kind namespace/name`, as problems name objects) if more than
    /// one file `defines` it.
    fn note_duplicates(&mut self, name: String, defines: impl Fn(&TrackedFile) -> bool) {
        let files: Vec<&PathBuf> = self
            .files
            .iter()
            .filter(|(_, f)| defines(f))
            .map(|(p, _)| p)
            .collect();
        if let [.., previous, last] = files.as_slice() {
            let problem = Problem::new(
                ProblemKind::Conflict,
                format!(
                    "also defined in {}; the definition in {} wins",
                    previous.display(),
                    last.display()
                ),
            )
            .object(name.clone())
            .origin(last.display().to_string());
            self.duplicates.insert(name, problem);
        } else {
            self.duplicates.remove(&name);
        }
    }

    /// Problems of the files as they are now.
    pub fn problems(&self) -> Vec<Problem> {
        self.listing_problem
            .iter()
            .chain(self.files.values().flat_map(|f| &f.problems))
            .chain(self.duplicates.values())
            .cloned()
            .collect()
    }

    /// Adds where an object was defined to a problem about it.
    pub fn locate(&self, problem: Problem) -> Problem {
        if problem.origin.is_some() {
            return problem;
        }
        let origin = problem
            .object
            .as_ref()
            .and_then(|o| self.files.values().rev().find_map(|f| f.origins.get(o)));
        match origin {
            Some(origin) => {
                let origin = origin.clone();
                problem.origin(origin)
            }
            None => problem,
        }
    }

    /// Everything currently defined, with all problems (for one-shot reads). The source
    /// keeps only what the model keeps of each object, so the objects as written are read
    /// again from the files it tracks, a later file's definition winning as in `refresh`.
    pub fn snapshot(&self) -> Snapshot {
        let mut services = BTreeMap::new();
        let mut slices = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let mut origins = HashMap::new();
        for path in self.files.keys() {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue; // gone since the refresh, which reported it
            };
            let file = parse_str(&text, &path.display().to_string());
            services.extend(
                file.services
                    .into_iter()
                    .map(|s| (object_key(&s.metadata), s)),
            );
            slices.extend(
                file.slices
                    .into_iter()
                    .map(|s| (object_key(&s.metadata), s)),
            );
            nodes.extend(
                file.nodes
                    .into_iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), n)),
            );
            origins.extend(file.origins);
        }
        Snapshot {
            services: services.into_values().collect(),
            slices: slices.into_values().collect(),
            nodes: nodes.into_values().collect(),
            problems: self.problems(),
            origins,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::ManifestSource;
    use crate::{model::Change, problem::ProblemKind};

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n"
        )
    }

    /// `(kind, name, present)` of each change, sorted.
    fn summary(changes: &[Change]) -> Vec<(&'static str, String, Option<String>)> {
        let mut out: Vec<_> = changes
            .iter()
            .map(|c| match c {
                Change::Service(k, s) => (
                    "Service",
                    k.name().to_string(),
                    s.as_ref()
                        .and_then(|s| Some(s.spec.as_ref()?.cluster_ips.first()?.to_string())),
                ),
                Change::Slice(k, s) => (
                    "EndpointSlice",
                    k.name().to_string(),
                    s.as_ref().map(|_| String::new()),
                ),
                Change::Node(n) => (
                    "Node",
                    String::new(),
                    n.as_ref().and_then(|n| n.metadata.name.clone()),
                ),
            })
            .collect();
        out.sort();
        out
    }

    fn write(dir: &Path, file: &str, text: &str) {
        // A new inode each time, like config management tools (and a different stamp even
        // within the same mtime tick).
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(file)).expect("rename");
    }

    fn node(name: &str, zone: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n"
        )
    }

    #[test]
    fn only_this_nodes_node_is_handed_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        write(
            d,
            "nodes.yaml",
            &(node("node-a", "z1") + "---\n" + &node("node-b", "z2")),
        );
        let mut source = ManifestSource::new(d).with_node("node-a");
        let zone_of = |changes: &[Change]| -> Vec<Option<String>> {
            changes
                .iter()
                .map(|c| match c {
                    Change::Node(n) => n
                        .as_ref()
                        .map(|n| crate::model::NodeInfo::from_node(n).zone().to_owned()),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        assert_eq!(zone_of(&source.refresh()), [Some("z1".to_owned())]);
        // The other node changes: nothing for this agent.
        write(
            d,
            "nodes.yaml",
            &(node("node-a", "z1") + "---\n" + &node("node-b", "z3")),
        );
        assert!(source.refresh().is_empty());
        write(d, "nodes.yaml", &node("node-a", "z9"));
        assert_eq!(zone_of(&source.refresh()), [Some("z9".to_owned())]);
        std::fs::remove_file(d.join("nodes.yaml")).expect("remove");
        assert_eq!(
            zone_of(&source.refresh()),
            [None],
            "the node's definition is gone"
        );
        assert_eq!(source.snapshot().nodes.len(), 0);
    }

    #[test]
    fn refresh_reports_only_what_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        write(
            d,
            "a.yaml",
            &(service("a", "198.19.0.1") + "---\n" + &service("b", "198.19.0.2")),
        );
        write(d, "c.yaml", &service("c", "198.19.0.3"));
        let mut source = ManifestSource::new(d);
        let some = |ip: &str| Some(ip.to_owned());
        assert_eq!(
            summary(&source.refresh()),
            [
                ("Service", "a".into(), some("198.19.0.1")),
                ("Service", "b".into(), some("198.19.0.2")),
                ("Service", "c".into(), some("198.19.0.3")),
            ]
        );
        assert!(
            source.refresh().is_empty(),
            "nothing changed, nothing reported"
        );

        write(
            d,
            "a.yaml",
            &(service("a", "198.19.0.1") + "---\n" + &service("b", "198.19.0.22")),
        );
        assert_eq!(
            summary(&source.refresh()),
            [("Service", "b".into(), some("198.19.0.22"))]
        );

        // A later file redefines "a": it wins, and the duplicate is reported.
        write(d, "d.yaml", &service("a", "198.19.0.11"));
        assert_eq!(
            summary(&source.refresh()),
            [("Service", "a".into(), some("198.19.0.11"))]
        );
        let problems = source.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, ProblemKind::Conflict);
        // Removing it brings the earlier definition back.
        std::fs::remove_file(d.join("d.yaml")).expect("remove");
        assert_eq!(
            summary(&source.refresh()),
            [("Service", "a".into(), some("198.19.0.1"))]
        );
        assert!(source.problems().is_empty());

        std::fs::remove_file(d.join("c.yaml")).expect("remove");
        assert_eq!(summary(&source.refresh()), [("Service", "c".into(), None)]);
    }

    #[test]
    fn an_unreadable_path_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("one.yaml");
        std::fs::write(&file, service("a", "198.19.0.1")).expect("write");
        let mut source = ManifestSource::new(&file);
        assert_eq!(source.refresh().len(), 1);
        std::fs::remove_file(&file).expect("remove");
        assert!(
            source.refresh().is_empty(),
            "a missing path does not delete the services"
        );
        assert_eq!(source.problems()[0].kind, ProblemKind::Read);
    }
}
