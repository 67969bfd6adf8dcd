//! Leader election with a `coordination.k8s.io/v1` Lease: only the replica holding the Lease
//! reconciles. [`decide`] is the pure rule; [`Elector`] does the I/O with optimistic concurrency
//! (every write carries the `resourceVersion` it read, so two replicas cannot both win).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// What a replica should do with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// The holder let it expire (or released it): take it over.
    TakeOver,
    /// Another replica holds it until it expires.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// The rule: a Lease is free when nobody holds it or its holder has not renewed it within its
/// duration.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() { Decision::Create } else { Decision::TakeOver };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    match renewed {
        _ if holder.is_empty() => Decision::TakeOver,
        Some(renewed) if renewed + duration > now => Decision::Wait { holder },
        _ => Decision::TakeOver,
    }
}

/// Holds or waits for the Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `identity`, with a lease of `duration`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: reads the Lease and creates, renews or takes it over as [`decide`] says.
    /// Returns whether this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let lease = self.api.get_opt(&self.name).await?;
        let decision = decide(lease.as_ref(), &self.identity, now);
        let written = match (decision, lease) {
            (Decision::Wait { holder }, _) => {
                tracing::debug!(%holder, "another replica leads");
                return Ok(false);
            }
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(decision == Decision::TakeOver);
                let acquired = if decision == Decision::Renew { old.acquire_time } else { None };
                lease.spec = Some(self.spec(now, acquired, transitions));
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
            (_, None) => return Ok(false),
        };
        match written {
            Ok(_) => Ok(true),
            // Someone else wrote first: not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
    }

    /// How often the holder renews: a third of the lease.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_is_taken_only_when_free_or_expired() {
        let now = Timestamp::from_second(100).unwrap();
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), 10)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("b"), 90)), "a", now), Decision::Wait { holder: "b".into() });
        assert_eq!(decide(Some(&lease(Some("b"), 80)), "a", now), Decision::TakeOver, "expired at 95");
        assert_eq!(decide(Some(&lease(None, 99)), "a", now), Decision::TakeOver, "released");
    }
}
