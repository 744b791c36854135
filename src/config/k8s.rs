//! Kubernetes manifests as a provider: `[providers.kubernetesCRD]` (an
//! extension: Traefik's provider of that name reads the API server; this one
//! reads the manifest files of a `directory`, watched like the file
//! provider's).
//!
//! The objects Traefik's CRD provider turns into TCP configuration, under
//! both API groups (`traefik.io/v1alpha1` and the older
//! `traefik.containo.us/v1alpha1`): `IngressRouteTCP`, `MiddlewareTCP`,
//! `ServersTransportTCP`, `TLSOption`, `TLSStore`, plus the core objects they
//! name: `Secret`s (`tls.crt`/`tls.key`, `tls.ca`/`ca.crt`, base64 in `data`
//! or plain in `stringData`), `ConfigMap`s (CAs) and `Service`s (their ports,
//! `ExternalName`). Every other kind (Deployment, HTTP IngressRoute, ...) is
//! skipped. Names are Traefik's: a router and its service are
//! `<namespace>-<name>-<first 10 bytes of sha256(match), hex>`, a weighted
//! child `<that>-<service>-<port>`, middlewares and transports
//! `<namespace>-<name>` with other characters than letters and digits
//! turned into `-`, TLS options `<namespace>-<name>` (`default` stays
//! `default`). References stay in their namespace unless
//! `allowCrossNamespace = true` (Traefik's default is false).
//!
//! A Service reference (name, namespace, port) becomes server addresses in
//! this order:
//! 1. a mapping in the static configuration,
//!    `[providers.kubernetesCRD.services."ns/name"]` (or `"ns/name:port"`,
//!    the port by number or name) `servers = ["10.0.0.7:5432", ...]`: the
//!    Service's endpoints, for a sluicegate outside the cluster or in tests;
//! 2. an `ExternalName` Service manifest: `<externalName>:<port>` (with
//!    `allowExternalNameServices = true`, as Traefik);
//! 3. otherwise the cluster DNS name `<svc>.<ns>.svc.cluster.local:<port>`
//!    (the port's number from the Service manifest when there is one, which
//!    must then list the port, as Traefik checks). Like every server name it
//!    is resolved at load (and at each reload) with the system resolver, not
//!    at dial time: the dial path stays free of blocking DNS lookups, a name
//!    that does not resolve is a `check` error at the reference, and the
//!    Service's ClusterIP is stable for its lifetime (kube-proxy balances
//!    over the pods, as Traefik's `nativeLB`).
//!
//! The boundary with where objects come from is `read`: positioned object
//! trees in, `FileModel` additions out. Manifest files are one source (the
//! loader parses each file with `tree::parse_yaml_stream` and hands every
//! document's root in); a later Kubernetes API watch would hand in the
//! objects it lists the same way (each object's JSON is YAML, parsed into
//! the same tree), so naming, references and errors stay one code path.
//! Errors are `FILE:LINE:COL` in the manifest files. Pure: no IO.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::diag::{Diags, Pos, Sources, Sp};
use super::dynamic;
use super::file::{
    FileModel, LoadBalancerF, Named, RouterF, RouterTlsF, ServerF, ServiceF, ServiceKindF,
    WeightedChildF, WeightedF,
};
use super::reader::{StrOrInt, Tbl};
use super::tls as tls_conf;
use super::values::{self, FileCtx};
use crate::model;

/// The API versions of Traefik's CRDs (v3 and the v2 group still served).
pub const TRAEFIK_API_VERSIONS: &[&str] = &["traefik.io/v1alpha1", "traefik.containo.us/v1alpha1"];
/// Traefik's provider name, the suffix of cross-provider references.
const PROVIDER_SUFFIX: &str = "@kubernetescrd";
/// The cluster DNS suffix of Services.
const CLUSTER_DOMAIN: &str = "svc.cluster.local";
/// The namespace of an object that names none (as `kubectl apply`).
const DEFAULT_NAMESPACE: &str = "default";
/// The ingress class Traefik takes as its own when none is configured.
const TRAEFIK_INGRESS_CLASS: &str = "traefik";
/// The deprecated annotation naming an object's ingress class.
const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Traefik's name of the default TLS options and store.
const DEFAULT_NAME: &str = "default";

/// `[providers.kubernetesCRD]`.
#[derive(Debug)]
pub struct Settings {
    /// The directory of manifest files (`.yaml`, `.yml`, `.json`).
    pub directory: Option<Sp<PathBuf>>,
    pub watch: bool,
    /// Only objects of these namespaces are read (all when empty).
    pub namespaces: Vec<String>,
    pub allow_cross_namespace: bool,
    pub allow_external_name_services: bool,
    /// Traefik's `ingressClass`: empty takes objects of no class or `traefik`.
    pub ingress_class: String,
    /// `[providers.kubernetesCRD.services."ns/name[:port]"]`.
    pub services: Vec<ServiceMapping>,
}

/// A Service's endpoints given in the static configuration.
#[derive(Debug)]
pub struct ServiceMapping {
    pub namespace: String,
    pub name: String,
    /// The Service port it is for (number or name); `None`: every port.
    pub port: Option<String>,
    pub servers: Vec<Sp<String>>,
}

/// Reads `[providers.kubernetesCRD]`.
pub fn read_settings(mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> Settings {
    let directory = t
        .get("directory", d)
        .and_then(|n| values::file_path(&n, ctx, d));
    if !t.has("directory") {
        d.error(
            t.at,
            "[providers.kubernetesCRD] needs `directory`, the manifest files to read (sluicegate does not read the Kubernetes API)",
        );
    }
    let watch = t.bool("watch", d).is_some_and(|b| b.v);
    let namespaces = t
        .str_list("namespaces", d)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.v)
        .collect();
    let allow_cross_namespace = t.bool("allowCrossNamespace", d).is_some_and(|b| b.v);
    let allow_external_name_services = t.bool("allowExternalNameServices", d).is_some_and(|b| b.v);
    let ingress_class = t.str("ingressClass", d).map(|s| s.v).unwrap_or_default();
    // Accepted as they are: every Service reference gets a server address
    // (empty Services do not exist here), it is always the Service's own
    // address (as nativeLB), and no cluster-scope object (Node) is read.
    for key in [
        "allowEmptyServices",
        "nativeLBByDefault",
        "disableClusterScopeResources",
    ] {
        let _ = t.bool(key, d);
    }
    for key in ["endpoint", "token", "certAuthFilePath"] {
        t.ignored(
            key,
            "the Kubernetes API is not read: objects come from the manifest files in `directory`",
            d,
        );
    }
    t.ignored(
        "throttleDuration",
        "manifest changes are applied as they are seen",
        d,
    );
    t.unsupported(
        "labelSelector",
        "objects are not filtered by label; keep only the manifests to load in `directory`",
        d,
    );
    let mut services = Vec::new();
    if let Some(st) = t.table("services", d) {
        for (key, node) in st.entries() {
            let Some(mut mt) = node.table(d) else {
                continue;
            };
            let servers = mt.str_list("servers", d);
            if !mt.has("servers") {
                d.error(mt.at, format!("[{}] needs `servers`", mt.path));
            }
            mt.finish(d);
            let (target, port) = match key.v.rsplit_once(':') {
                Some((t, p)) => (t, Some(p.to_string())),
                None => (key.v.as_str(), None),
            };
            let Some((namespace, name)) = target.split_once('/').filter(|(ns, n)| {
                !ns.is_empty() && !n.is_empty() && port.as_ref().is_none_or(|p| !p.is_empty())
            }) else {
                d.error(
                    key.at,
                    format!(
                        "`{}`: a Service is named \"namespace/name\" or \"namespace/name:port\"",
                        key.v
                    ),
                );
                continue;
            };
            let servers = servers.unwrap_or_default();
            services.push(ServiceMapping {
                namespace: namespace.to_string(),
                name: name.to_string(),
                port,
                servers,
            });
        }
    }
    t.finish(d);
    Settings {
        directory,
        watch,
        namespaces,
        allow_cross_namespace,
        allow_external_name_services,
        ingress_class,
        services,
    }
}

/// `namespace-name`, as Traefik's `makeID`.
fn make_id(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}-{name}")
    }
}

/// Traefik's `provider.Normalize`: runs of characters that are neither
/// letters nor digits become one `-` (none at the ends).
fn normalize(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Traefik's `makeServiceKey`: the object's name and the first 10 bytes of
/// the SHA-256 of the rule, in hex.
fn route_key(rule: &str, ingress: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rule.as_bytes());
    let hex: String = digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{ingress}-{hex}")
}

/// A Secret's or ConfigMap's entries that sluicegate reads, decoded.
#[derive(Debug, Default)]
struct DataObject {
    entries: HashMap<String, Sp<String>>,
}

/// The Secret and ConfigMap keys that carry certificates, keys and CAs.
const DATA_KEYS: &[&str] = &["tls.crt", "tls.key", "tls.ca", "ca.crt"];

#[derive(Debug)]
struct ServiceObject {
    external_name: Option<String>,
    /// (name, port) of every `spec.ports` entry.
    ports: Vec<(Option<String>, i64)>,
}

/// One object's identity.
struct Meta {
    name: Sp<String>,
    namespace: String,
    /// The `kubernetes.io/ingress.class` annotation.
    class_annotation: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    IngressRouteTcp,
    MiddlewareTcp,
    ServersTransportTcp,
    TlsOption,
    TlsStore,
}

struct Crd<'a> {
    kind: Kind,
    meta: Meta,
    spec: Option<Tbl<'a>>,
}

/// Everything read from the objects, for references between them.
struct Cluster<'s> {
    settings: &'s Settings,
    sources: &'s Sources,
    secrets: HashMap<(String, String), DataObject>,
    config_maps: HashMap<(String, String), DataObject>,
    services: HashMap<(String, String), ServiceObject>,
    /// Secrets already turned into certificates (`ns/name`), as Traefik
    /// adds each once however many routes name it.
    certs_added: HashSet<(String, String)>,
}

/// Objects in, file model additions out: `objects` are the top-level
/// mappings of Kubernetes objects, whatever read them.
pub fn read(
    objects: Vec<Tbl<'_>>,
    settings: &Settings,
    sources: &Sources,
    m: &mut FileModel,
    d: &mut Diags,
) {
    let mut c = Cluster {
        settings,
        sources,
        secrets: HashMap::new(),
        config_maps: HashMap::new(),
        services: HashMap::new(),
        certs_added: HashSet::new(),
    };
    let mut crds = Vec::new();
    let mut seen: HashMap<(String, String, String), Pos> = HashMap::new();
    let mut queue = objects;
    queue.reverse();
    while let Some(mut o) = queue.pop() {
        let api_version = o.str("apiVersion", d);
        let kind = o.str("kind", d);
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            d.error(
                o.at,
                "not a Kubernetes object: it needs `apiVersion` and `kind`",
            );
            continue;
        };
        // `kubectl get -o yaml` of several objects: a List of them.
        if kind.v == "List" && api_version.v == "v1" {
            if let Some(items) = o.get("items", d) {
                let mut items = items.tables(d);
                items.reverse();
                queue.extend(items);
            }
            continue;
        }
        let traefik = TRAEFIK_API_VERSIONS.contains(&api_version.v.as_str());
        let crd_kind = match kind.v.as_str() {
            "IngressRouteTCP" => Some(Kind::IngressRouteTcp),
            "MiddlewareTCP" => Some(Kind::MiddlewareTcp),
            "ServersTransportTCP" => Some(Kind::ServersTransportTcp),
            "TLSOption" => Some(Kind::TlsOption),
            "TLSStore" => Some(Kind::TlsStore),
            _ => None,
        };
        let core =
            api_version.v == "v1" && matches!(kind.v.as_str(), "Secret" | "ConfigMap" | "Service");
        if crd_kind.is_some() && !traefik {
            if api_version.v.starts_with("traefik.") {
                d.error(
                    api_version.at,
                    format!(
                        "`{}` {} is not a Traefik API version (expected {})",
                        api_version.v,
                        kind.v,
                        TRAEFIK_API_VERSIONS.join(" or ")
                    ),
                );
            }
            continue;
        }
        if traefik && crd_kind.is_none() {
            d.warn(
                kind.at,
                format!(
                    "{} object ignored: sluicegate proxies TCP (IngressRouteTCP, MiddlewareTCP, ServersTransportTCP, TLSOption, TLSStore)",
                    kind.v
                ),
            );
            continue;
        }
        if crd_kind.is_none() && !core {
            // Deployments, HTTP Ingresses, ...: not routing configuration.
            continue;
        }
        let Some(meta) = meta(&mut o, d) else {
            continue;
        };
        let ns = &c.settings.namespaces;
        if !ns.is_empty() && !ns.contains(&meta.namespace) {
            continue;
        }
        let id = (kind.v.clone(), meta.namespace.clone(), meta.name.v.clone());
        if let Some(prev) = seen.get(&id) {
            d.error(
                meta.name.at,
                format!(
                    "{} `{}/{}` is already defined at {}",
                    kind.v,
                    meta.namespace,
                    meta.name.v,
                    sources.locate(*prev)
                ),
            );
            continue;
        }
        seen.insert(id, meta.name.at);
        let key = (meta.namespace.clone(), meta.name.v.clone());
        match kind.v.as_str() {
            "Secret" => {
                let obj = data_object(&mut o, true, d);
                c.secrets.insert(key, obj);
            }
            "ConfigMap" => {
                let obj = data_object(&mut o, false, d);
                c.config_maps.insert(key, obj);
            }
            "Service" => {
                if let Some(s) = service_object(&mut o, d) {
                    c.services.insert(key, s);
                }
            }
            _ => {
                let Some(kind) = crd_kind else { continue };
                let spec = o.table("spec", d);
                crds.push(Crd { kind, meta, spec });
            }
        }
    }
    for crd in crds {
        let Some(spec) = crd.spec else {
            d.error(
                crd.meta.name.at,
                format!("`{}` has no `spec`", crd.meta.name.v),
            );
            continue;
        };
        match crd.kind {
            Kind::IngressRouteTcp => ingress_route(&mut c, &crd.meta, spec, m, d),
            Kind::MiddlewareTcp => {
                let id = normalize(&make_id(&crd.meta.namespace, &crd.meta.name.v));
                let name = Sp::new(id.clone(), crd.meta.name.at);
                let kind = dynamic::middleware(&name, spec, d)
                    .unwrap_or(model::MiddlewareKind::IpAllowList(Vec::new()));
                m.middlewares.push(Named {
                    name,
                    v: model::Middleware { name: id, kind },
                });
            }
            Kind::ServersTransportTcp => {
                let id = normalize(&make_id(&crd.meta.namespace, &crd.meta.name.v));
                let ns = crd.meta.namespace.clone();
                let v =
                    dynamic::transport_with(&id, spec, d, |tt, d| transport_tls(&c, &ns, tt, d));
                m.transports.push(Named {
                    name: Sp::new(id, crd.meta.name.at),
                    v,
                });
            }
            Kind::TlsOption => {
                let id = if crd.meta.name.v == DEFAULT_NAME {
                    DEFAULT_NAME.to_string()
                } else {
                    make_id(&crd.meta.namespace, &crd.meta.name.v)
                };
                let ns = crd.meta.namespace.clone();
                let v = tls_conf::options(&id, spec, d, "secretNames", |ca, d| {
                    let mut out = Vec::new();
                    for s in ca.str_list("secretNames", d).unwrap_or_default() {
                        out.extend(ca_from(&c, &c.secrets, "Secret", &ns, &s, d));
                    }
                    out
                });
                m.tls_options.push(Named {
                    name: Sp::new(id, crd.meta.name.at),
                    v,
                });
            }
            Kind::TlsStore => tls_store(&mut c, &crd.meta, spec, m, d),
        }
    }
}

fn meta(o: &mut Tbl<'_>, d: &mut Diags) -> Option<Meta> {
    let Some(mut md) = o.table("metadata", d) else {
        d.error(o.at, "the object has no `metadata`");
        return None;
    };
    let name = md.str("name", d);
    let namespace = md
        .str("namespace", d)
        .map(|s| s.v)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let mut class_annotation = None;
    if let Some(a) = md.table("annotations", d) {
        for (k, v) in a.entries() {
            if k.v == INGRESS_CLASS_ANNOTATION {
                class_annotation = v.str(d).map(|s| s.v);
            }
        }
    }
    // The rest of `metadata` (labels, uid, ...) does not change routing.
    match name {
        Some(name) if !name.v.is_empty() => Some(Meta {
            name,
            namespace,
            class_annotation,
        }),
        _ => {
            d.error(md.at, "the object needs `metadata.name`");
            None
        }
    }
}

/// A Secret (`data` base64, `stringData` plain) or a ConfigMap (`data`
/// plain): the entries that carry PEM.
fn data_object(o: &mut Tbl<'_>, secret: bool, d: &mut Diags) -> DataObject {
    let mut out = DataObject::default();
    if let Some(data) = o.table("data", d) {
        for (k, node) in data.entries() {
            if !DATA_KEYS.contains(&k.v.as_str()) {
                continue;
            }
            let Some(s) = node.str(d) else { continue };
            let value = if secret {
                match decode_base64(&s.v) {
                    Ok(v) => v,
                    Err(e) => {
                        d.error(s.at, format!("`{}`: {e}", node.path));
                        continue;
                    }
                }
            } else {
                s.v
            };
            out.entries.insert(k.v, Sp::new(value, s.at));
        }
    }
    if secret {
        if let Some(data) = o.table("stringData", d) {
            for (k, node) in data.entries() {
                if DATA_KEYS.contains(&k.v.as_str()) {
                    if let Some(s) = node.str(d) {
                        out.entries.insert(k.v, s);
                    }
                }
            }
        }
    }
    out
}

/// A Secret's `data` value: base64 (whitespace allowed, as YAML folds long
/// lines) of UTF-8 text.
fn decode_base64(s: &str) -> Result<String, String> {
    use base64::Engine as _;
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| format!("Secret data must be base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the decoded Secret data is not text (PEM)".to_string())
}

fn service_object(o: &mut Tbl<'_>, d: &mut Diags) -> Option<ServiceObject> {
    let mut spec = o.table("spec", d)?;
    let kind = spec.str("type", d).map(|s| s.v).unwrap_or_default();
    let external_name = spec.str("externalName", d).map(|s| s.v);
    let mut ports = Vec::new();
    if let Some(n) = spec.get("ports", d) {
        for mut p in n.tables(d) {
            let name = p.str("name", d).map(|s| s.v);
            if let Some(port) = p.int("port", d) {
                ports.push((name, port.v));
            }
        }
    }
    Some(ServiceObject {
        external_name: external_name.filter(|_| kind == "ExternalName"),
        ports,
    })
}

/// Whether an object of ingress class `class` is this provider's
/// (Traefik's `shouldProcessIngress`).
fn should_process(provider_class: &str, class: &str) -> bool {
    provider_class == class || (provider_class.is_empty() && class == TRAEFIK_INGRESS_CLASS)
}

/// Traefik's `resolveReference` for middlewares and TLS options:
/// `name@provider` as written (`@kubernetescrd` only with
/// allowCrossNamespace, and then it names an object here), else
/// `<namespace>-<name>` normalized, the namespace defaulting to the parent's.
fn reference(
    c: &Cluster<'_>,
    parent_ns: &str,
    ns: Option<&Sp<String>>,
    name: &Sp<String>,
    what: &str,
    d: &mut Diags,
) -> Option<String> {
    if name.v.contains('@') {
        if let Some(local) = name.v.strip_suffix(PROVIDER_SUFFIX) {
            if !c.settings.allow_cross_namespace {
                d.error(
                    name.at,
                    format!(
                        "{what} `{}`: `@kubernetescrd` references are refused while allowCrossNamespace is false (as Traefik)",
                        name.v
                    ),
                );
                return None;
            }
            return Some(local.to_string());
        }
        return Some(name.v.clone());
    }
    let target_ns = ns.map_or(parent_ns, |n| n.v.as_str());
    if !namespace_allowed(c, parent_ns, target_ns) {
        d.error(
            ns.map_or(name.at, |n| n.at),
            format!(
                "{what} `{target_ns}/{}` is in another namespace than `{parent_ns}`: set allowCrossNamespace = true in [providers.kubernetesCRD] to allow it",
                name.v
            ),
        );
        return None;
    }
    Some(normalize(&make_id(target_ns, &name.v)))
}

fn namespace_allowed(c: &Cluster<'_>, parent: &str, ns: &str) -> bool {
    c.settings.allow_cross_namespace || parent == ns
}

fn ingress_route(
    c: &mut Cluster<'_>,
    meta: &Meta,
    mut spec: Tbl<'_>,
    m: &mut FileModel,
    d: &mut Diags,
) {
    let class = spec
        .str("ingressClassName", d)
        .map(|s| s.v)
        .or_else(|| meta.class_annotation.clone())
        .unwrap_or_default();
    if !should_process(&c.settings.ingress_class, &class) {
        return;
    }
    let ns = meta.namespace.as_str();
    let entry_points = spec.str_list("entryPoints", d).unwrap_or_default();
    let tls = spec.section("tls", d).map(|mut tt| {
        let passthrough = tt.bool("passthrough", d).is_some_and(|b| b.v);
        if let Some(secret) = tt.str("secretName", d) {
            if !passthrough {
                add_secret_certificate(c, ns, &secret, m, d);
            }
        }
        let options = tt.table("options", d).and_then(|mut ot| {
            let name = ot.str("name", d);
            let namespace = ot.str("namespace", d);
            ot.finish(d);
            let name = name.filter(|n| !n.v.is_empty())?;
            if name.v == DEFAULT_NAME && namespace.is_none() {
                return Some(Sp::new(DEFAULT_NAME.to_string(), name.at));
            }
            reference(c, ns, namespace.as_ref(), &name, "TLSOption", d).map(|r| Sp::new(r, name.at))
        });
        // Traefik does not use `store` for TCP routers either.
        if let Some(mut st) = tt.table("store", d) {
            let _ = st.str("name", d);
            let _ = st.str("namespace", d);
            st.finish(d);
        }
        let cert_resolver = tt.str("certResolver", d).filter(|s| !s.v.is_empty());
        let domains = tt
            .get("domains", d)
            .map(|n| super::acme::read_domains(&n, d))
            .unwrap_or_default();
        let at = tt.at;
        tt.finish(d);
        RouterTlsF {
            at,
            passthrough,
            options,
            cert_resolver,
            domains,
        }
    });
    let routes = match spec.get("routes", d) {
        Some(n) => n.tables(d),
        None => {
            d.error(
                meta.name.at,
                format!("IngressRouteTCP `{}` needs `routes`", meta.name.v),
            );
            Vec::new()
        }
    };
    spec.finish(d);
    for mut r in routes {
        let syntax = r
            .str("syntax", d)
            .and_then(|s| {
                let path = format!("{}.syntax", r.path);
                dynamic::rule_syntax(&s, &path, d)
            })
            .unwrap_or(m.default_rule_syntax);
        let rule = r
            .get("match", d)
            .and_then(|n| dynamic::read_rule(&n, syntax, d));
        let priority = r.int("priority", d).filter(|p| p.v != 0);
        let mut middlewares = Vec::new();
        if let Some(n) = r.get("middlewares", d) {
            for mut mt in n.tables(d) {
                let name = mt.str("name", d);
                let namespace = mt.str("namespace", d);
                if !mt.has("name") {
                    d.error(mt.at, format!("`{}` needs a `name`", mt.path));
                }
                mt.finish(d);
                if let Some(name) = name {
                    if let Some(r) = reference(c, ns, namespace.as_ref(), &name, "middleware", d) {
                        middlewares.push(Sp::new(r, name.at));
                    }
                }
            }
        }
        let services = r
            .get("services", d)
            .map(|n| n.tables(d))
            .unwrap_or_default();
        let at = r.at;
        let route_path = r.path.clone();
        r.finish(d);
        let Some(rule) = rule.filter(|s| !s.v.0.is_empty()) else {
            d.error(at, format!("`{route_path}` needs a `match` rule"));
            continue;
        };
        let service_name = make_id(ns, &route_key(&rule.v.0, &meta.name.v));
        // Router-level messages (a name defined twice) point at the rule.
        let at = rule.at;
        if services.is_empty() {
            d.error(at, format!("`{route_path}` needs `services`"));
        }
        let single = services.len() == 1;
        let mut children = Vec::new();
        let mut failed = false;
        for st in services {
            let Some(s) = service_ref(c, ns, st, d) else {
                failed = true;
                continue;
            };
            if single {
                m.services.push(ServiceF {
                    name: Sp::new(service_name.clone(), s.name.at),
                    kind: Some(ServiceKindF::LoadBalancer(s.lb)),
                    on_server_down: model::OnServerDown::Keep,
                    hold: None,
                });
                break;
            }
            let child = format!("{service_name}-{}-{}", s.name.v, s.port);
            m.services.push(ServiceF {
                name: Sp::new(child.clone(), s.name.at),
                kind: Some(ServiceKindF::LoadBalancer(s.lb)),
                on_server_down: model::OnServerDown::Keep,
                hold: None,
            });
            children.push(WeightedChildF {
                name: Sp::new(child, s.name.at),
                weight: s.weight.unwrap_or(1),
            });
        }
        if failed {
            // Reported already: defined without a kind, so the router's
            // reference is not a second, misleading error.
            m.services.push(ServiceF {
                name: Sp::new(service_name.clone(), at),
                kind: None,
                on_server_down: model::OnServerDown::Keep,
                hold: None,
            });
        } else if !single && !children.is_empty() {
            m.services.push(ServiceF {
                name: Sp::new(service_name.clone(), at),
                kind: Some(ServiceKindF::Weighted(WeightedF {
                    children,
                    health_check: None,
                    failover: false,
                })),
                on_server_down: model::OnServerDown::Keep,
                hold: None,
            });
        }
        m.routers.push(RouterF {
            name: Sp::new(service_name.clone(), at),
            entry_points: entry_points.clone(),
            rule: Some(rule),
            priority,
            service: Some(Sp::new(service_name, at)),
            middlewares,
            tls: tls.as_ref().map(|t| RouterTlsF {
                at: t.at,
                passthrough: t.passthrough,
                options: t.options.clone(),
                cert_resolver: t.cert_resolver.clone(),
                domains: t.domains.clone(),
            }),
            postgres: None,
        });
    }
}

/// One route's service, read and resolved.
struct ServiceRef {
    name: Sp<String>,
    /// The port as written (number or name), for the weighted child's name.
    port: String,
    weight: Option<u32>,
    lb: LoadBalancerF,
}

fn service_ref(
    c: &Cluster<'_>,
    parent_ns: &str,
    mut st: Tbl<'_>,
    d: &mut Diags,
) -> Option<ServiceRef> {
    let name = st.str("name", d);
    let namespace = st.str("namespace", d);
    let port = st.get("port", d).and_then(|n| n.str_or_int(d));
    let weight = st.get("weight", d).and_then(|n| values::weight(&n, d));
    let termination_delay = st
        .get("terminationDelay", d)
        .and_then(|n| values::termination_delay_ms(&n, d));
    let proxy_protocol = st.table("proxyProtocol", d).and_then(|mut pp| {
        let v = match pp.get("version", d) {
            Some(n) => values::proxy_version(&n, d),
            None => Some(model::ProxyVersion::V2),
        };
        pp.finish(d);
        v
    });
    let servers_transport = st
        .str("serversTransport", d)
        .and_then(|s| transport_key(c, parent_ns, &s, d).map(|k| Sp::new(k, s.at)));
    let tls = st.bool("tls", d).is_some_and(|b| b.v);
    let _ = st.bool("nativeLB", d);
    if let Some(b) = st.bool("nodePortLB", d).filter(|b| b.v) {
        d.error(
            b.at,
            "`nodePortLB` is not supported: sluicegate reads no Node objects; map the Service in [providers.kubernetesCRD.services]",
        );
    }
    let at = st.at;
    let path = st.path.clone();
    st.finish(d);
    let (Some(name), Some(port)) = (name, port) else {
        d.error(at, format!("`{path}` needs `name` and `port`"));
        return None;
    };
    let port_text = match &port.v {
        StrOrInt::Int(i) => i.to_string(),
        StrOrInt::Str(s) => s.clone(),
    };
    let ns = namespace.as_ref().map_or(parent_ns, |n| n.v.as_str());
    if !namespace_allowed(c, parent_ns, ns) {
        d.error(
            namespace.as_ref().map_or(name.at, |n| n.at),
            format!(
                "Service `{ns}/{}` is in another namespace than `{parent_ns}`: set allowCrossNamespace = true in [providers.kubernetesCRD] to allow it",
                name.v
            ),
        );
        return None;
    }
    let addresses = service_addresses(c, ns, &name, &port, d)?;
    let servers = addresses
        .into_iter()
        .map(|a| ServerF {
            address: Some(a),
            tls,
            weight: 1,
            max_conn: None,
        })
        .collect();
    Some(ServiceRef {
        name,
        port: port_text,
        weight,
        lb: LoadBalancerF {
            at,
            servers,
            // As Traefik: the deprecated delay only without a transport.
            termination_delay: termination_delay.filter(|_| servers_transport.is_none()),
            servers_transport,
            proxy_protocol,
            health_check: None,
            pg_ssl_request_first: false,
            strategy: model::Strategy::default(),
            max_conn: None,
            queue_timeout: None,
        },
    })
}

/// Traefik's `makeTCPServersTransportKey`.
fn transport_key(
    c: &Cluster<'_>,
    parent_ns: &str,
    s: &Sp<String>,
    d: &mut Diags,
) -> Option<String> {
    if s.v.contains('@') {
        if let Some(local) = s.v.strip_suffix(PROVIDER_SUFFIX) {
            if !c.settings.allow_cross_namespace {
                d.error(
                    s.at,
                    format!(
                        "serversTransport `{}`: the namespace-name@kubernetescrd form is refused while allowCrossNamespace is false (as Traefik)",
                        s.v
                    ),
                );
                return None;
            }
            return Some(local.to_string());
        }
        return Some(s.v.clone());
    }
    Some(normalize(&make_id(parent_ns, &s.v)))
}

/// The server addresses of a Service reference (see the module comment).
fn service_addresses(
    c: &Cluster<'_>,
    ns: &str,
    name: &Sp<String>,
    port: &Sp<StrOrInt>,
    d: &mut Diags,
) -> Option<Vec<Sp<String>>> {
    let svc = c.services.get(&(ns.to_string(), name.v.clone()));
    // The Service port the reference means: (name, number).
    let svc_port: Option<(Option<&str>, i64)> = match svc {
        Some(s) => {
            let found = s.ports.iter().find(|(pn, pp)| match &port.v {
                StrOrInt::Int(i) => pp == i,
                StrOrInt::Str(want) => pn.as_deref() == Some(want.as_str()),
            });
            match (found, &port.v) {
                (Some((pn, pp)), _) => Some((pn.as_deref(), *pp)),
                // Traefik: an ExternalName Service takes a numeric port it
                // does not list.
                (None, StrOrInt::Int(i)) if s.external_name.is_some() => Some((None, *i)),
                (None, _) => {
                    if mapping(c, ns, &name.v, None, port).is_none() {
                        d.error(
                            port.at,
                            format!(
                                "Service `{ns}/{}` has no port {}",
                                name.v,
                                port_display(&port.v)
                            ),
                        );
                        return None;
                    }
                    None
                }
            }
        }
        None => match &port.v {
            StrOrInt::Int(i) => Some((None, *i)),
            StrOrInt::Str(_) => None,
        },
    };
    if let Some(mapping) = mapping(c, ns, &name.v, svc_port, port) {
        return Some(mapping.servers.clone());
    }
    let Some((_, number)) = svc_port else {
        d.error(
            port.at,
            format!(
                "port {} of Service `{ns}/{}` is a name: add the Service's manifest to the directory, or map it in [providers.kubernetesCRD.services]",
                port_display(&port.v),
                name.v
            ),
        );
        return None;
    };
    if !(1..=65535).contains(&number) {
        d.error(port.at, format!("port {number} is not from 1 to 65535"));
        return None;
    }
    if let Some(external) = svc.and_then(|s| s.external_name.as_deref()) {
        if !c.settings.allow_external_name_services {
            d.error(
                name.at,
                format!(
                    "Service `{ns}/{}` is an ExternalName Service: set allowExternalNameServices = true in [providers.kubernetesCRD] to use it (as Traefik)",
                    name.v
                ),
            );
            return None;
        }
        return Some(vec![Sp::new(join_host_port(external, number), name.at)]);
    }
    let host = format!("{}.{ns}.{CLUSTER_DOMAIN}", name.v);
    Some(vec![Sp::new(join_host_port(&host, number), name.at)])
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn port_display(p: &StrOrInt) -> String {
    match p {
        StrOrInt::Int(i) => i.to_string(),
        StrOrInt::Str(s) => format!("{s:?}"),
    }
}

/// The mapping of a Service reference: one for its port (by the number or
/// name written, or the Service manifest's other spelling of it) first,
/// else one for the whole Service.
fn mapping<'c>(
    c: &'c Cluster<'_>,
    ns: &str,
    name: &str,
    svc_port: Option<(Option<&str>, i64)>,
    port: &Sp<StrOrInt>,
) -> Option<&'c ServiceMapping> {
    let written = match &port.v {
        StrOrInt::Int(i) => i.to_string(),
        StrOrInt::Str(s) => s.clone(),
    };
    let of_service = |m: &&ServiceMapping| m.namespace == ns && m.name == name;
    let same_port = |p: &str| {
        p == written || svc_port.is_some_and(|(pn, pp)| pn == Some(p) || p == pp.to_string())
    };
    c.settings
        .services
        .iter()
        .filter(of_service)
        .find(|m| m.port.as_deref().is_some_and(same_port))
        .or_else(|| {
            c.settings
                .services
                .iter()
                .filter(of_service)
                .find(|m| m.port.is_none())
        })
}

/// A Secret's PEM entry as inline content, positioned at the entry.
fn inline_pem(c: &Cluster<'_>, v: &Sp<String>) -> model::ConfigPath {
    model::ConfigPath {
        path: PathBuf::from(model::INLINE_PEM_LABEL),
        at: c.sources.locate(v.at),
        inline: Some(v.v.clone()),
    }
}

/// `tls.crt` and `tls.key` of Secret `ns/name`.
fn secret_pair(
    c: &Cluster<'_>,
    ns: &str,
    name: &Sp<String>,
    d: &mut Diags,
) -> Option<Sp<model::CertPair>> {
    let Some(secret) = c.secrets.get(&(ns.to_string(), name.v.clone())) else {
        d.error(
            name.at,
            format!("Secret `{ns}/{}` is not defined in the manifests", name.v),
        );
        return None;
    };
    let crt = secret.entries.get("tls.crt");
    let key = secret.entries.get("tls.key");
    match (crt, key) {
        (Some(crt), Some(key)) => Some(Sp::new(
            model::CertPair {
                cert_file: inline_pem(c, crt),
                key_file: inline_pem(c, key),
            },
            name.at,
        )),
        _ => {
            let missing: Vec<&str> = [("tls.crt", crt.is_none()), ("tls.key", key.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| *k)
                .collect();
            d.error(
                name.at,
                format!(
                    "Secret `{ns}/{}` is missing the TLS data entries {}",
                    name.v,
                    missing.join(", ")
                ),
            );
            None
        }
    }
}

fn add_secret_certificate(
    c: &mut Cluster<'_>,
    ns: &str,
    name: &Sp<String>,
    m: &mut FileModel,
    d: &mut Diags,
) {
    let key = (ns.to_string(), name.v.clone());
    if c.certs_added.contains(&key) {
        return;
    }
    if let Some(pair) = secret_pair(c, ns, name, d) {
        m.certificates.push(pair);
    }
    c.certs_added.insert(key);
}

/// A CA (`tls.ca`, else `ca.crt`) of a Secret or ConfigMap.
fn ca_from(
    c: &Cluster<'_>,
    objects: &HashMap<(String, String), DataObject>,
    what: &str,
    ns: &str,
    name: &Sp<String>,
    d: &mut Diags,
) -> Option<model::ConfigPath> {
    let Some(o) = objects.get(&(ns.to_string(), name.v.clone())) else {
        d.error(
            name.at,
            format!("{what} `{ns}/{}` is not defined in the manifests", name.v),
        );
        return None;
    };
    match o.entries.get("tls.ca").or_else(|| o.entries.get("ca.crt")) {
        Some(v) => Some(inline_pem(c, v)),
        None => {
            d.error(
                name.at,
                format!(
                    "{what} `{ns}/{}` contains neither tls.ca nor ca.crt",
                    name.v
                ),
            );
            None
        }
    }
}

/// A ServersTransportTCP's `tls`: CAs and client certificates by Secret
/// (or ConfigMap) name.
fn transport_tls(c: &Cluster<'_>, ns: &str, mut t: Tbl<'_>, d: &mut Diags) -> model::TransportTls {
    let server_name = t
        .str("serverName", d)
        .map(|s| s.v)
        .filter(|s| !s.is_empty());
    let insecure_skip_verify = t.bool("insecureSkipVerify", d).is_some_and(|b| b.v);
    let mut root_cas = Vec::new();
    if let Some(n) = t.get("rootCAs", d) {
        for mut rt in n.tables(d) {
            let secret = rt.str("secret", d);
            let config_map = rt.str("configMap", d);
            let at = rt.at;
            let path = rt.path.clone();
            rt.finish(d);
            match (secret, config_map) {
                (Some(s), None) => root_cas.extend(ca_from(c, &c.secrets, "Secret", ns, &s, d)),
                (None, Some(cm)) => {
                    root_cas.extend(ca_from(c, &c.config_maps, "ConfigMap", ns, &cm, d))
                }
                _ => d.error(at, format!("`{path}` needs one of `secret` or `configMap`")),
            }
        }
    }
    if let Some(list) = t.str_list("rootCAsSecrets", d) {
        if let Some(first) = list.first() {
            d.warn(
                first.at,
                "`rootCAsSecrets` is deprecated in Traefik: use rootCAs = [{ secret = ... }]",
            );
        }
        for s in &list {
            root_cas.extend(ca_from(c, &c.secrets, "Secret", ns, s, d));
        }
    }
    let mut certificates = Vec::new();
    for s in t.str_list("certificatesSecrets", d).unwrap_or_default() {
        certificates.extend(secret_pair(c, ns, &s, d).map(|p| p.v));
    }
    let mut peer_cert_sans = Vec::new();
    if let Some(n) = t.get("peerCertSANs", d) {
        for st in n.tables(d) {
            peer_cert_sans.extend(dynamic::peer_san(st, d));
        }
    }
    if let Some(uri) = t.str("peerCertURI", d) {
        if !uri.v.is_empty() {
            peer_cert_sans.push(model::PeerSan::Uri(uri.v));
        }
    }
    t.unsupported(
        "spiffe",
        "SPIFFE is not supported; use rootCAs and certificatesSecrets",
        d,
    );
    t.finish(d);
    model::TransportTls {
        server_name,
        root_cas,
        insecure_skip_verify,
        certificates,
        peer_cert_sans,
    }
}

fn tls_store(
    c: &mut Cluster<'_>,
    meta: &Meta,
    mut spec: Tbl<'_>,
    m: &mut FileModel,
    d: &mut Diags,
) {
    let ns = meta.namespace.clone();
    let is_default = meta.name.v == DEFAULT_NAME;
    if !is_default {
        d.warn(
            meta.name.at,
            format!(
                "TLSStore `{}` is ignored: Traefik uses the `{DEFAULT_NAME}` store only",
                make_id(&ns, &meta.name.v)
            ),
        );
    }
    let default_cert = spec.table("defaultCertificate", d).and_then(|mut ct| {
        let s = ct.str("secretName", d);
        ct.finish(d);
        s
    });
    let mut certs = Vec::new();
    if let Some(n) = spec.get("certificates", d) {
        for mut ct in n.tables(d) {
            certs.extend(ct.str("secretName", d));
            ct.finish(d);
        }
    }
    spec.unsupported(
        "defaultGeneratedCert",
        "a default certificate from a certResolver is not supported; give a defaultCertificate instead",
        d,
    );
    spec.finish(d);
    if !is_default {
        return;
    }
    if let Some(s) = default_cert {
        if let Some(pair) = secret_pair(c, &ns, &s, d) {
            if m.default_certificate.is_some() {
                d.error(
                    s.at,
                    "the default store's defaultCertificate is defined more than once (a TLSStore `default` in several namespaces?)",
                );
            } else {
                m.default_certificate = Some(pair);
            }
        }
    }
    for s in certs {
        add_secret_certificate(c, &ns, &s, m, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_traefiks() {
        // Traefik's own fixture (pkg/provider/kubernetes/crd): router
        // `default-test.route-fdd3e9338e47a45efefc` for this rule.
        assert_eq!(
            make_id("default", &route_key("HostSNI(`foo.com`)", "test.route")),
            "default-test.route-fdd3e9338e47a45efefc"
        );
        assert_eq!(normalize("default-db.ip_allow"), "default-db-ip-allow");
        assert_eq!(normalize("--a..b--"), "a-b");
        assert!(should_process("", ""));
        assert!(should_process("", "traefik"));
        assert!(!should_process("", "nginx"));
        assert!(should_process("internal", "internal"));
        assert!(!should_process("internal", ""));
    }

    #[test]
    fn secret_data_is_base64_of_text() {
        assert_eq!(decode_base64("aGVs\n bG8=").unwrap(), "hello");
        assert!(decode_base64("<base64-encoded-certificate>").is_err());
        assert!(decode_base64("/w==").is_err());
    }

    /// Without a mapping, a Service is its cluster DNS name, resolved at
    /// load (here by a fixed table, as the cluster's DNS would answer); a
    /// mapping for the port wins over one for the whole Service.
    #[test]
    fn services_resolve_by_cluster_dns_name_or_mapping() {
        let dir = std::env::temp_dir().join(format!("sluicegate-k8s-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("m")).unwrap();
        std::fs::write(
            dir.join("m/r.yaml"),
            "apiVersion: traefik.io/v1alpha1\nkind: IngressRouteTCP\nmetadata: {name: r}\nspec:\n  routes:\n  - match: HostSNI(`*`)\n    services:\n    - {name: pg, port: 5432, weight: 3}\n    - {name: cache, namespace: default, port: 6379}\n",
        )
        .unwrap();
        let main = dir.join("s.toml");
        std::fs::write(
            &main,
            "[entryPoints.e]\naddress = \"127.0.0.1:0\"\n[providers.kubernetesCRD]\ndirectory = \"m\"\n[providers.kubernetesCRD.services.\"default/cache\"]\nservers = [\"127.0.0.1:1\"]\n[providers.kubernetesCRD.services.\"default/cache:6379\"]\nservers = [\"127.0.0.1:2\"]\n",
        )
        .unwrap();
        let resolve = |host: &str, port: u16| -> Result<Vec<std::net::SocketAddr>, String> {
            match host {
                "pg.default.svc.cluster.local" => Ok(vec![([10, 96, 0, 7], port).into()]),
                "127.0.0.1" => Ok(vec![([127, 0, 0, 1], port).into()]),
                other => Err(format!("unknown {other}")),
            }
        };
        let cfg = super::super::load_with(&main, &resolve);
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = cfg.expect("loads");
        let servers: Vec<(String, String, String)> = cfg
            .services
            .iter()
            .flat_map(|s| match &s.kind {
                model::ServiceKind::LoadBalancer(lb) => lb
                    .servers
                    .iter()
                    .map(|v| {
                        (
                            s.name.clone(),
                            v.address_text.clone(),
                            v.address.to_string(),
                        )
                    })
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        let base = "default-r-673acf455cb2dab0b43a";
        let want = |svc: &str, text: &str, addr: &str| {
            (format!("{base}-{svc}"), text.to_string(), addr.to_string())
        };
        assert_eq!(
            servers,
            vec![
                want(
                    "pg-5432",
                    "pg.default.svc.cluster.local:5432",
                    "10.96.0.7:5432"
                ),
                want("cache-6379", "127.0.0.1:2", "127.0.0.1:2"),
            ]
        );
        let weighted = cfg
            .services
            .iter()
            .find(|s| s.name == base)
            .expect("weighted");
        let model::ServiceKind::Weighted(children) = &weighted.kind else {
            panic!("{:?}", weighted.kind)
        };
        let weights: Vec<u32> = children.iter().map(|c| c.weight).collect();
        assert_eq!(weights, vec![3, 1]);
    }
}
