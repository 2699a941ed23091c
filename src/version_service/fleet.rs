//! The fleet of agents, as they report themselves with each version check: per-namespace
//! gauges computed at each scrape (`kura_fleet_agents`, `kura_fleet_agents_failing`,
//! `kura_fleet_agents_stale`). An agent is keyed by (namespace, pod); one not heard from for 3
//! of its own intervals is dropped; the table holds at most [`MAX_AGENTS`] (past it the agent
//! heard from longest ago makes room). Labels are the token's namespace and the agent's
//! fixed error kinds (anything else is `other`), so a caller cannot grow the label set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kura_agent::metrics::ErrorKind;
use kura_agent::versions::AgentState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::telemetry::{FailingLabels, NamespaceLabels};

/// Agents tracked at most (about 200 bytes each with ordinary names: some 10 MiB).
pub const MAX_AGENTS: usize = 50_000;

/// An agent is stale once its last success is older than this many intervals, and dropped once
/// it has not been heard from for as long.
pub const INTERVALS: u32 = 3;

#[derive(Debug, Clone)]
struct Agent {
    interval: Duration,
    first_seen: Instant,
    last_seen: Instant,
    last_success_unix: Option<u64>,
    /// The error kind while failing.
    failing: Option<&'static str>,
}

impl Agent {
    fn gone(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) > self.interval * INTERVALS
    }

    fn stale(&self, now: Instant, now_unix: u64) -> bool {
        let limit = self.interval * INTERVALS;
        match self.last_success_unix {
            Some(t) => Duration::from_secs(now_unix.saturating_sub(t)) > limit,
            None => now.saturating_duration_since(self.first_seen) > limit,
        }
    }
}

/// What the gauges show for one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceCounts {
    pub agents: u64,
    pub stale: u64,
    /// By error kind.
    pub failing: BTreeMap<&'static str, u64>,
}

/// The agents heard from.
#[derive(Debug, Default)]
pub struct Fleet {
    agents: Mutex<HashMap<(String, String), Agent>>,
}

/// The agent's error kind as a label: one of [`ErrorKind::ALL`], else `other`.
pub fn error_kind_label(kind: &str) -> &'static str {
    ErrorKind::ALL
        .iter()
        .find(|k| k.as_str() == kind)
        .map_or(ErrorKind::Other.as_str(), |k| k.as_str())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Fleet {
    /// Records a check from (namespace, pod).
    pub fn heard(&self, namespace: &str, pod: &str, state: &AgentState) {
        self.heard_at(namespace, pod, state, Instant::now());
    }

    fn heard_at(&self, namespace: &str, pod: &str, state: &AgentState, now: Instant) {
        let interval = Duration::from_secs(state.refresh_interval_seconds.clamp(1, 86_400));
        let failing = (state.consecutive_failures > 0 || state.error_kind.is_some()).then(|| {
            state
                .error_kind
                .as_deref()
                .map_or(ErrorKind::Other.as_str(), error_kind_label)
        });
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), pod.to_string());
        let first_seen = match agents.get(&key) {
            Some(a) => a.first_seen,
            None => {
                if agents.len() >= MAX_AGENTS {
                    agents.retain(|_, a| !a.gone(now));
                }
                if agents.len() >= MAX_AGENTS
                    && let Some(oldest) = agents
                        .iter()
                        .min_by_key(|(_, a)| a.last_seen)
                        .map(|(k, _)| k.clone())
                {
                    agents.remove(&oldest);
                }
                now
            }
        };
        agents.insert(
            key,
            Agent {
                interval,
                first_seen,
                last_seen: now,
                last_success_unix: state.last_success_unix,
                failing,
            },
        );
    }

    /// Drops the agents gone quiet and counts the rest by namespace.
    pub fn counts(&self) -> BTreeMap<String, NamespaceCounts> {
        self.counts_at(Instant::now(), unix_now())
    }

    fn counts_at(&self, now: Instant, now_unix: u64) -> BTreeMap<String, NamespaceCounts> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.retain(|_, a| !a.gone(now));
        let mut out: BTreeMap<String, NamespaceCounts> = BTreeMap::new();
        for ((ns, _), a) in agents.iter() {
            let c = out.entry(ns.clone()).or_default();
            c.agents += 1;
            if a.stale(now, now_unix) {
                c.stale += 1;
            }
            if let Some(kind) = a.failing {
                *c.failing.entry(kind).or_default() += 1;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.agents.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a gauge family under `name`.
fn encode_family<L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<L, Gauge>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet
        + Clone
        + std::hash::Hash
        + Eq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    family.encode(metric)
}

impl Collector for Fleet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agents = Family::<NamespaceLabels, Gauge>::default();
        let stale = Family::<NamespaceLabels, Gauge>::default();
        let failing = Family::<FailingLabels, Gauge>::default();
        for (namespace, c) in self.counts() {
            let ns = NamespaceLabels {
                namespace: namespace.clone(),
            };
            agents.get_or_create(&ns).set(c.agents as i64);
            stale.get_or_create(&ns).set(c.stale as i64);
            for (kind, n) in c.failing {
                failing
                    .get_or_create(&FailingLabels {
                        namespace: namespace.clone(),
                        error_kind: kind.to_string(),
                    })
                    .set(n as i64);
            }
        }
        encode_family(
            &mut encoder,
            "fleet_agents",
            "Agents that checked in with the version service recently, by namespace",
            &agents,
        )?;
        encode_family(
            &mut encoder,
            "fleet_agents_failing",
            "Agents whose last refresh failed, by namespace and error kind",
            &failing,
        )?;
        encode_family(
            &mut encoder,
            "fleet_agents_stale",
            "Agents whose last successful refresh is older than 3 of their intervals, by namespace",
            &stale,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(interval: u64, last_success: Option<u64>, kind: Option<&str>) -> AgentState {
        AgentState {
            pod: String::new(),
            refresh_interval_seconds: interval,
            last_success_unix: last_success,
            consecutive_failures: u32::from(kind.is_some()),
            error_kind: kind.map(Into::into),
        }
    }

    #[test]
    fn agents_are_counted_stale_failing_and_dropped_after_three_quiet_intervals() {
        let fleet = Fleet::default();
        let t0 = Instant::now();
        let unix = 1_800_000_000;
        fleet.heard_at("orders", "a", &state(60, Some(unix - 10), None), t0);
        fleet.heard_at(
            "orders",
            "b",
            &state(60, Some(unix - 1000), Some("throttled")),
            t0,
        );
        fleet.heard_at("orders", "c", &state(60, None, Some("made-up\nkind")), t0);
        fleet.heard_at("web", "a", &state(10, Some(unix), None), t0);
        let c = fleet.counts_at(t0, unix);
        assert_eq!(c["orders"].agents, 3);
        assert_eq!(c["orders"].stale, 1, "b: 1000 s > 3 × 60 s");
        assert_eq!(
            c["orders"].failing,
            BTreeMap::from([("other", 1), ("throttled", 1)])
        );
        assert_eq!(c["web"].agents, 1);
        // 31 s later: web's agent (10 s interval) has missed three checks; orders' have not.
        let later = t0 + Duration::from_secs(31);
        let c = fleet.counts_at(later, unix + 31);
        assert!(!c.contains_key("web"), "{c:?}");
        assert_eq!(c["orders"].agents, 3);
        // 179 s: a's last success is 189 s old (> 3 × 60 s); c never succeeded but was first
        // heard under 180 s ago.
        let c = fleet.counts_at(t0 + Duration::from_secs(179), unix + 179);
        assert_eq!(c["orders"].stale, 2, "{c:?}");
        fleet.heard_at(
            "orders",
            "c",
            &state(60, None, None),
            t0 + Duration::from_secs(179),
        );
        // 182 s: a and b, quiet for over 3 intervals, are dropped; c, heard again but never
        // successful since it was first heard 182 s ago, is stale.
        let c = fleet.counts_at(t0 + Duration::from_secs(182), unix + 182);
        assert_eq!((c["orders"].agents, c["orders"].stale), (1, 1), "{c:?}");
    }

    #[test]
    fn the_table_is_bounded() {
        let fleet = Fleet::default();
        let t0 = Instant::now();
        for i in 0..MAX_AGENTS + 10 {
            fleet.heard_at("ns", &format!("pod-{i}"), &state(60, None, None), t0);
        }
        assert_eq!(fleet.len(), MAX_AGENTS);
    }
}
