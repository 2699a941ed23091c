//! Current versions, learned from metadata calls the whole cluster shares, never a value.
//!
//! - Secrets Manager: `ListSecrets` filtered by `name` = the scope prefixes (`/{namespace}/` of
//!   the built-in policy), ten prefixes a call (AWS's filter limit), every page
//!   ([`MAX_LIST_PAGES`] at most), `SecretVersionsToStages` included. A prefix agents asked
//!   about in the last [`HOT_FOR`] is *hot*: [`Learner::refresh_loop`] lists every hot prefix
//!   together once a TTL, whether one agent asks or a thousand, so the cost is a constant
//!   `ceil(hot prefixes / 10) × pages` calls per TTL and what agents are told is at most a TTL
//!   old. A prefix not yet hot is listed when first asked about. A reference the last listing
//!   does not hold (created since, outside any prefix, past the page bound) gets one
//!   `DescribeSecret`, kept for the TTL.
//! - SSM: `DescribeParameters` (`Name Equals`, 50 names a call) gives an unpinned
//!   parameter's latest version; a pinned version is its own answer; a label is `unknown`
//!   (only `GetParameterHistory`, which returns values, says where labels are).
//!
//! Lookups run single-flight ([`super::flight`]); a store failure fails the request (`503`:
//! the agent polls AWS itself); an answer about the secret (not found, access denied) makes it
//! `unknown` so that the agent asks AWS and reports its own error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kura_agent::spec::{Reference, parameter_name};
use kura_agent::store::{
    MetadataApi, ParameterType, ParameterVersion, SecretListing, SecretMeta, SecretVersions, Store,
    StoreError, id_matches,
};
use kura_agent::versions::{VersionAnswer, VersionRef};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::flight::{Bounds, Flights, Lost};
use crate::policy::Scope;
use crate::telemetry::ApiLabels;

/// `ListSecrets` pages read for one prefix at most (100 secrets a page); past it, references
/// the listing did not reach are described one by one.
pub const MAX_LIST_PAGES: u32 = 20;

/// How long a prefix stays hot (listed ahead of time each TTL) after an agent last asked about
/// it: several of the longest usual refresh intervals.
pub const HOT_FOR: Duration = Duration::from_secs(15 * 60);

/// A listing refreshed ahead of time is trusted for this many TTLs: if the refresher falls
/// behind (AWS slow), asking agents look it up themselves after that.
const LIST_TTLS: u32 = 3;

/// `DescribeSecret` calls of one lookup in flight at once.
const DESCRIBE_AT_ONCE: usize = 8;

/// Listings kept: prefixes and bytes.
pub const LIST_BOUNDS: Bounds = Bounds {
    entries: 4096,
    bytes: 24 * 1024 * 1024,
};

/// Described secrets and parameter versions kept, each.
pub const LOOKUP_BOUNDS: Bounds = Bounds {
    entries: 20_000,
    bytes: 8 * 1024 * 1024,
};

/// The store could not say: the request is answered `503`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl From<Lost> for Unavailable {
    fn from(_: Lost) -> Self {
        Unavailable("a store lookup stopped before it answered".into())
    }
}

/// What the references come to.
#[derive(Debug)]
pub enum Learned {
    /// One answer per reference, in order.
    Answers(Vec<VersionAnswer>),
    /// References that resolve outside the namespace's scope (name, ARN or namespace tag),
    /// each with why.
    Refused(Vec<(String, String)>),
}

/// The shared caches in front of the store.
#[derive(Debug)]
pub struct Learner {
    store: Store,
    ttl: Duration,
    /// Prefixes asked about, with when they last were (at most `LIST_BOUNDS.entries`).
    hot: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    lists: Flights<Arc<SecretListing>, Unavailable>,
    secrets: Flights<Arc<SecretVersions>, Unavailable>,
    parameters: Flights<ParameterVersion, Unavailable>,
    calls: Family<ApiLabels, Counter>,
}

/// What a [`VersionRef`] resolved to.
enum Resolved {
    Secret(Option<Arc<SecretVersions>>),
    Parameter(Option<ParameterVersion>),
    /// Answered without a lookup (a pinned parameter version, a label).
    Plain,
}

impl Learner {
    /// `ttl`: how long what is learned is trusted; `calls`: where AWS calls are counted by API.
    pub fn new(store: Store, ttl: Duration, calls: Family<ApiLabels, Counter>) -> Self {
        Learner {
            store,
            ttl,
            hot: std::sync::Mutex::default(),
            lists: Flights::new(ttl * LIST_TTLS, LIST_BOUNDS),
            secrets: Flights::new(ttl, LOOKUP_BOUNDS),
            parameters: Flights::new(ttl, LOOKUP_BOUNDS),
            calls,
        }
    }

    /// Answers references already found in `namespace`'s scope by what they say.
    pub async fn answer(
        &self,
        refs: &[VersionRef],
        namespace: &str,
        scope: &Scope,
    ) -> Result<Learned, Unavailable> {
        let secrets = self.secrets_of(refs, namespace, scope).await?;
        let parameters = self.parameters_of(refs).await?;
        let mut answers = Vec::with_capacity(refs.len());
        let mut refused = Vec::new();
        for r in refs {
            let resolved = match Reference::of(&r.secret) {
                Reference::Secret(_) => Resolved::Secret(secrets.get(&r.secret).cloned().flatten()),
                Reference::Parameter(p) if r.version_id.is_none() && r.version_stage.is_none() => {
                    Resolved::Parameter(
                        parameters
                            .get(&parameter_name(p))
                            .cloned()
                            .flatten()
                            .filter(|v| same_parameter(p, v)),
                    )
                }
                Reference::Parameter(_) => Resolved::Plain,
            };
            let meta = match &resolved {
                Resolved::Secret(Some(s)) => Some(s.meta()),
                Resolved::Parameter(Some(p)) => Some(parameter_meta(p)),
                _ => None,
            };
            if let Some(meta) = meta
                && let Err(why) = scope.check_resolved(&meta, namespace)
            {
                refused.push((r.secret.clone(), why.to_string()));
                continue;
            }
            answers.push(answer(r, &resolved));
        }
        if refused.is_empty() {
            Ok(Learned::Answers(answers))
        } else {
            Ok(Learned::Refused(refused))
        }
    }

    /// Each secret reference's versions (`None`: not found, or not visible to kura).
    async fn secrets_of(
        &self,
        refs: &[VersionRef],
        namespace: &str,
        scope: &Scope,
    ) -> Result<BTreeMap<String, Option<Arc<SecretVersions>>>, Unavailable> {
        let ids: BTreeSet<&str> = refs
            .iter()
            .map(|r| r.secret.as_str())
            .filter(|s| !Reference::of(s).is_parameter())
            .collect();
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let prefixes: Vec<String> = ids
            .iter()
            .filter_map(|id| list_prefix(scope, namespace, id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.mark_hot(&prefixes);
        let listings = if prefixes.is_empty() {
            BTreeMap::new()
        } else {
            let (store, calls) = (self.store.clone(), self.calls.clone());
            self.lists
                .get(
                    &prefixes,
                    |l| listing_bytes(l),
                    move |prefixes| async move { list(&store, &calls, &prefixes).await },
                )
                .await?
        };
        let mut found: BTreeMap<String, Option<Arc<SecretVersions>>> = BTreeMap::new();
        let mut describe: Vec<String> = Vec::new();
        for id in ids {
            let listing =
                list_prefix(scope, namespace, id).and_then(|p| listings.get(&p).cloned().flatten());
            let seen = listing.as_ref().and_then(|l| {
                l.secrets
                    .iter()
                    .find(|s| id_matches(id, &s.arn, &s.name))
                    .cloned()
            });
            match seen {
                Some(s) => {
                    found.insert(id.to_string(), Some(Arc::new(s)));
                }
                None => describe.push(id.to_string()),
            }
        }
        if !describe.is_empty() {
            let (store, calls) = (self.store.clone(), self.calls.clone());
            let described = self
                .secrets
                .get(
                    &describe,
                    |s| s.bytes(),
                    move |ids| async move {
                        // A few at a time: DescribeSecret has a per-second quota of its own.
                        let mut answers = Vec::with_capacity(ids.len());
                        for chunk in ids.chunks(DESCRIBE_AT_ONCE) {
                            answers.extend(
                                futures_util::future::join_all(
                                    chunk.iter().map(|id| store.describe_secret_versions(id)),
                                )
                                .await,
                            );
                        }
                        count(&calls, MetadataApi::DescribeSecret, ids.len() as u64);
                        let mut out = BTreeMap::new();
                        for (id, a) in ids.into_iter().zip(answers) {
                            match a {
                                Ok(s) => {
                                    out.insert(id, Arc::new(s));
                                }
                                Err(e) if e.is_store_failure() => {
                                    return Err(unavailable("DescribeSecret", &e));
                                }
                                // Not found, access denied…: the agent asks AWS and says so itself.
                                Err(_) => {}
                            }
                        }
                        Ok(out)
                    },
                )
                .await?;
            found.extend(described);
        }
        Ok(found)
    }

    /// Notes that agents asked about `prefixes` now.
    fn mark_hot(&self, prefixes: &[String]) {
        let now = std::time::Instant::now();
        let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        for p in prefixes {
            if !hot.contains_key(p) && hot.len() >= LIST_BOUNDS.entries {
                let oldest = hot.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    hot.remove(&k);
                }
            }
            hot.insert(p.clone(), now);
        }
    }

    /// Lists every hot prefix together, ahead of the agents' checks; forgets prefixes nobody
    /// asked about for [`HOT_FOR`]. Returns how many prefixes were listed. A store failure is
    /// returned (the listings held stay until they expire; agents then look up themselves).
    pub async fn refresh_hot(&self) -> Result<usize, Unavailable> {
        let prefixes: Vec<String> = {
            let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            hot.retain(|_, t| now.duration_since(*t) < HOT_FOR);
            let mut v: Vec<String> = hot.keys().cloned().collect();
            v.sort();
            v
        };
        if prefixes.is_empty() {
            return Ok(0);
        }
        let found = list(&self.store, &self.calls, &prefixes).await?;
        self.lists.put(found, |l| listing_bytes(l));
        Ok(prefixes.len())
    }

    /// Refreshes the hot prefixes once a TTL, until the runtime stops.
    pub async fn refresh_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.ttl);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.refresh_hot().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("listing secret versions works again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "could not list secret versions ahead of the agents' checks; retrying each TTL");
                }
                Err(_) => {}
            }
        }
    }

    /// The latest version of each unpinned parameter reference's parameter, by name.
    async fn parameters_of(
        &self,
        refs: &[VersionRef],
    ) -> Result<BTreeMap<String, Option<ParameterVersion>>, Unavailable> {
        let names: Vec<String> = refs
            .iter()
            .filter(|r| r.version_id.is_none() && r.version_stage.is_none())
            .filter_map(|r| match Reference::of(&r.secret) {
                Reference::Parameter(p) => Some(parameter_name(p)),
                Reference::Secret(_) => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (store, calls) = (self.store.clone(), self.calls.clone());
        self.parameters
            .get(
                &names,
                |p| p.arn.len() + p.name.len() + 64,
                move |names| async move {
                    let calls_made = names.len().div_ceil(kura_agent::store::DESCRIBE_BATCH);
                    count(&calls, MetadataApi::DescribeParameters, calls_made as u64);
                    store
                        .parameter_versions(&names)
                        .await
                        .map_err(|e| unavailable("DescribeParameters", &e))
                },
            )
            .await
    }
}

/// One listing of `prefixes` (ten a `ListSecrets` filter), split by prefix: a secret is in the
/// listing of each prefix its name starts with.
async fn list(
    store: &Store,
    calls: &Family<ApiLabels, Counter>,
    prefixes: &[String],
) -> Result<BTreeMap<String, Arc<SecretListing>>, Unavailable> {
    let l = store.list_secret_versions(prefixes, MAX_LIST_PAGES).await;
    // Counted whether or not the last page answered.
    let pages = l.as_ref().map_or(1, |l| l.pages);
    count(calls, MetadataApi::ListSecrets, u64::from(pages));
    let l = l.map_err(|e| unavailable("ListSecrets", &e))?;
    Ok(prefixes
        .iter()
        .map(|p| {
            let secrets = l
                .secrets
                .iter()
                .filter(|s| s.name.starts_with(p.as_str()))
                .cloned()
                .collect();
            let listing = SecretListing {
                secrets,
                complete: l.complete,
                pages: l.pages,
            };
            (p.clone(), Arc::new(listing))
        })
        .collect())
}

fn count(calls: &Family<ApiLabels, Counter>, api: MetadataApi, n: u64) {
    calls
        .get_or_create(&ApiLabels {
            api: api.as_str().into(),
        })
        .inc_by(n);
}

fn unavailable(api: &str, e: &StoreError) -> Unavailable {
    Unavailable(format!("{api}: {e}"))
}

fn listing_bytes(l: &SecretListing) -> usize {
    l.secrets.iter().map(SecretVersions::bytes).sum::<usize>() + 64
}

/// The prefix whose listing holds `id`: the longest literal start (before the first `*` or
/// `?`) of the namespace's name templates that the secret's name starts with. `None` for an
/// id no template's prefix covers (it is described instead).
pub fn list_prefix(scope: &Scope, namespace: &str, id: &str) -> Option<String> {
    let name = match id.split_once(":secret:") {
        Some((_, name)) if id.starts_with("arn:") => name,
        _ => id,
    };
    scope
        .patterns(namespace, false)
        .filter_map(|p| {
            let literal = p.find(['*', '?']).map(|i| p[..i].to_string())?;
            (!literal.is_empty() && name.starts_with(&literal)).then_some(literal)
        })
        .max_by_key(String::len)
}

/// Whether a parameter ARN reference names the parameter found (the service describes its own
/// account and Region).
fn same_parameter(reference: &str, found: &ParameterVersion) -> bool {
    !reference.starts_with("arn:") || found.arn.is_empty() || found.arn == reference
}

fn parameter_meta(p: &ParameterVersion) -> SecretMeta {
    SecretMeta {
        arn: p.arn.clone(),
        name: p.name.clone(),
        kms_key_id: None,
        deleted: false,
        tags: BTreeMap::new(),
        parameter_type: Some(ParameterType::String),
    }
}

/// The answer to one reference.
fn answer(r: &VersionRef, resolved: &Resolved) -> VersionAnswer {
    let current = match resolved {
        Resolved::Secret(Some(s)) if s.shared_ids && !s.deleted => match &r.version_id {
            Some(id) => s.versions.contains_key(id).then(|| id.clone()),
            None => s
                .with_stage(r.version_stage.as_deref().unwrap_or("AWSCURRENT"))
                .map(str::to_string),
        },
        Resolved::Parameter(Some(p)) => Some(p.version.to_string()),
        // A pinned parameter version is what it names; a label is unknown.
        Resolved::Plain => r.version_id.clone(),
        _ => None,
    };
    VersionAnswer {
        secret: r.secret.clone(),
        version_stage: r.version_stage.clone(),
        version_id: r.version_id.clone(),
        unknown: current.is_none(),
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_by_the_longest_literal_prefix_of_the_namespaces_templates() {
        let scope = Scope::default();
        assert_eq!(
            list_prefix(&scope, "orders", "/orders/db").as_deref(),
            Some("/orders/")
        );
        assert_eq!(
            list_prefix(
                &scope,
                "orders",
                "arn:aws:secretsmanager:us-east-1:1:secret:/orders/db-AbCdEf"
            )
            .as_deref(),
            Some("/orders/")
        );
        assert_eq!(list_prefix(&scope, "orders", "/billing/db"), None);
    }

    #[test]
    fn answers_follow_stages_ids_and_labels() {
        let s = Arc::new(SecretVersions {
            arn: "arn".into(),
            name: "/o/db".into(),
            tags: BTreeMap::new(),
            deleted: false,
            versions: BTreeMap::from([
                ("v2".to_string(), vec!["AWSCURRENT".to_string()]),
                ("v1".to_string(), vec!["AWSPREVIOUS".to_string()]),
            ]),
            shared_ids: true,
        });
        let r = |id: Option<&str>, stage: Option<&str>| VersionRef {
            secret: "/o/db".into(),
            version_id: id.map(Into::into),
            version_stage: stage.map(Into::into),
        };
        let got = |r: VersionRef| answer(&r, &Resolved::Secret(Some(s.clone()))).current;
        assert_eq!(got(r(None, None)).as_deref(), Some("v2"));
        assert_eq!(got(r(None, Some("AWSPREVIOUS"))).as_deref(), Some("v1"));
        assert_eq!(got(r(Some("v1"), None)).as_deref(), Some("v1"));
        assert_eq!(got(r(Some("v0"), None)), None);
        assert_eq!(got(r(None, Some("blue"))), None);
        let label = VersionRef {
            secret: "ssm:/o/p".into(),
            version_id: None,
            version_stage: Some("blue".into()),
        };
        assert!(answer(&label, &Resolved::Plain).unknown);
    }
}
