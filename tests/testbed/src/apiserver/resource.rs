//! The resources the fake API server knows and the URL paths that name them.

/// One kind of object the server stores and serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    /// The plural name used in URLs ("services").
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    /// The `kind` of one object ("Service").
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    /// The `kind` of a list of objects ("ServiceList").
    pub fn list_kind(self) -> &'static str {
        match self {
            Resource::Services => "ServiceList",
            Resource::EndpointSlices => "EndpointSliceList",
            Resource::Nodes => "NodeList",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes)
    }

    pub fn from_plural(plural: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.plural() == plural)
    }

    pub fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// The URL prefix of the resource's API group ("/api/v1", "/apis/discovery.k8s.io/v1").
    fn group_prefix(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "/api/v1",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
        }
    }
}

/// What a request path names: a collection (all namespaces or one) or one object in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub resource: Resource,
    /// `Some` for `/namespaces/{ns}/...` paths.
    pub namespace: Option<String>,
    /// `Some` for a path that names one object.
    pub name: Option<String>,
}

impl Route {
    /// Parses `/api/v1/[namespaces/{ns}/]services[/{name}]` and the like; `None` for any path
    /// that names nothing this server serves.
    pub fn parse(path: &str) -> Option<Route> {
        Resource::ALL
            .into_iter()
            .find_map(|resource| Route::parse_for(resource, path))
    }

    fn parse_for(resource: Resource, path: &str) -> Option<Route> {
        let rest = path.strip_prefix(resource.group_prefix())?;
        let parts: Vec<&str> = rest.split('/').skip(1).collect();
        if rest.is_empty() || !rest.starts_with('/') || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        let (namespace, parts) = match parts.as_slice() {
            ["namespaces", ns, tail @ ..] if resource.namespaced() && !tail.is_empty() => {
                (Some((*ns).to_owned()), tail)
            }
            _ => (None, parts.as_slice()),
        };
        let name = match parts {
            [plural] if *plural == resource.plural() => None,
            // One object of a namespaced resource is only addressed inside its namespace.
            [plural, name]
                if *plural == resource.plural()
                    && (namespace.is_some() || !resource.namespaced()) =>
            {
                Some((*name).to_owned())
            }
            _ => return None,
        };
        Some(Route {
            resource,
            namespace,
            name,
        })
    }
}
