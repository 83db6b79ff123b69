//! Table tests of the election, the conflicts and the writes, and properties of the plan: never
//! two labelled pods among an active Service's pods, convergence to a plan that writes nothing,
//! and stickiness.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::api::active_standby::{MASTER_MARK_PREFIX, PodRef, Record};

fn now() -> Timestamp {
    "2026-11-21T12:00:00Z".parse().unwrap()
}

fn at(minutes: i64) -> Timestamp {
    now()
        .checked_sub(jiff::SignedDuration::from_mins(minutes))
        .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A ready pod of app=db, Ready for `ready_minutes`.
fn pod(name: &str, ready_minutes: i64) -> PodFacts {
    PodFacts {
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: "10".into(),
        labels: labels(&[("app", "db")]),
        ready: true,
        ready_since: Some(at(ready_minutes)),
        has_ip: true,
        deleting: false,
        draining: false,
        busy: Busyness::Idle,
        mark: None,
    }
}

fn master(mut pod: PodFacts, service: &str) -> PodFacts {
    pod.labels.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
    pod.mark = Some(format!("{MASTER_MARK_PREFIX}{service} (epoch 1)"));
    pod
}

fn reference(name: &str) -> PodRef {
    PodRef {
        name: name.into(),
        uid: format!("uid-{name}"),
    }
}

fn record(master: &str) -> Record {
    Record {
        master: Some(reference(master)),
        epoch: 1,
        since: Some(at(30).to_string()),
        failovers: 0,
        selector_added: true,
        unfenced: Vec::new(),
        warning: None,
    }
}

/// An active-standby Service selecting app=db, its selector already carrying our key when it
/// has a record.
fn service(name: &str, record: Option<Record>) -> ServiceFacts {
    let mut selector = labels(&[("app", "db")]);
    if record.is_some() {
        selector.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
    }
    ServiceFacts {
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: "5".into(),
        enabled: true,
        selector: Some(selector),
        record: record.map(Ok),
    }
}

fn namespace(services: Vec<ServiceFacts>, pods: Vec<PodFacts>) -> ObservedNamespace {
    ObservedNamespace {
        namespace: "ns".into(),
        services,
        pods,
    }
}

fn run(services: Vec<ServiceFacts>, pods: Vec<PodFacts>) -> NamespacePlan {
    plan(&namespace(services, pods), now())
}

fn fenced(plan: &NamespacePlan) -> Vec<&str> {
    plan.fences.iter().map(|f| f.pod.name.as_str()).collect()
}

fn labelled(plan: &NamespacePlan) -> Vec<&str> {
    plan.labels.iter().map(|l| l.pod.name.as_str()).collect()
}

fn reasons(plan: &ServicePlan) -> Vec<&str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn written(plan: &ServicePlan) -> &Record {
    plan.write
        .as_ref()
        .and_then(|w| w.record.as_ref())
        .expect("a record write")
}

#[test]
fn eligibility_table() {
    let cases: Vec<(&str, PodFacts, Option<Ineligible>)> = vec![
        ("ready with an IP", pod("a", 1), None),
        (
            "not ready",
            PodFacts {
                ready: false,
                ..pod("a", 1)
            },
            Some(Ineligible::NotReady),
        ),
        (
            "drained by its HSD's scale-down, still Ready",
            PodFacts {
                draining: true,
                ..pod("a", 1)
            },
            Some(Ineligible::Draining),
        ),
        (
            "no pod IP",
            PodFacts {
                has_ip: false,
                ..pod("a", 1)
            },
            Some(Ineligible::NoIp),
        ),
        (
            "being deleted, still Ready (a finalizer holds it)",
            PodFacts {
                deleting: true,
                ..pod("a", 1)
            },
            Some(Ineligible::Deleted),
        ),
        (
            "deleted and not ready: deleted says more",
            PodFacts {
                deleting: true,
                ready: false,
                ..pod("a", 1)
            },
            Some(Ineligible::Deleted),
        ),
    ];
    for (name, pod, expected) in cases {
        assert_eq!(pod.ineligible(), expected, "{name}");
    }
}

#[test]
fn the_first_election_prefers_idle_pods_then_the_longest_ready() {
    let cases: Vec<(&str, Vec<PodFacts>, &str)> = vec![
        ("longest ready", vec![pod("a", 5), pod("b", 50)], "b"),
        (
            "idle before busy, however long ready",
            vec![
                PodFacts {
                    busy: Busyness::Busy,
                    ..pod("a", 500)
                },
                pod("b", 5),
            ],
            "b",
        ),
        (
            "unknown between idle and busy",
            vec![
                PodFacts {
                    busy: Busyness::Busy,
                    ..pod("a", 500)
                },
                PodFacts {
                    busy: Busyness::Unknown,
                    ..pod("b", 5)
                },
            ],
            "b",
        ),
        (
            "ties by name",
            vec![pod("b", 5), pod("a", 5), pod("c", 5)],
            "a",
        ),
        (
            "ineligible pods are never elected",
            vec![
                PodFacts {
                    ready: false,
                    ..pod("a", 50)
                },
                PodFacts {
                    has_ip: false,
                    ..pod("b", 50)
                },
                PodFacts {
                    deleting: true,
                    ..pod("c", 50)
                },
                pod("d", 1),
            ],
            "d",
        ),
        (
            "a pod the selector does not select is never elected",
            vec![
                PodFacts {
                    labels: labels(&[("app", "other")]),
                    ..pod("a", 50)
                },
                pod("b", 1),
            ],
            "b",
        ),
    ];
    for (name, pods, want) in cases {
        let plan = run(vec![service("db", None)], pods);
        let svc = plan.service("db").unwrap();
        assert_eq!(labelled(&plan), vec![want], "{name}");
        assert_eq!(svc.decision.master.as_deref(), Some(want), "{name}");
        let record = written(svc);
        assert_eq!(record.master.as_ref().unwrap().name, want, "{name}");
        assert_eq!((record.epoch, record.failovers), (1, 0), "{name}");
        assert!(record.selector_added, "{name}");
        assert_eq!(
            svc.write.as_ref().unwrap().selector,
            SelectorChange::Add,
            "{name}"
        );
        assert_eq!(reasons(svc), vec!["MasterElected"], "{name}");
        assert!(fenced(&plan).is_empty(), "{name}");
    }
}

#[test]
fn a_steady_namespace_writes_nothing() {
    let plan = run(
        vec![service("db", Some(record("a")))],
        vec![master(pod("a", 30), "db"), pod("b", 300)],
    );
    assert!(!plan.writes(), "{plan:#?}");
    let svc = plan.service("db").unwrap();
    assert!(svc.events.is_empty());
    assert_eq!(svc.decision.action, "keep");
    assert_eq!(svc.decision.candidates, 1);
}

#[test]
fn election_is_sticky_while_the_master_is_eligible() {
    // b has been Ready far longer and a is busy: a stays all the same.
    let busy_master = PodFacts {
        busy: Busyness::Busy,
        ..master(pod("a", 1), "db")
    };
    let plan = run(
        vec![service("db", Some(record("a")))],
        vec![busy_master, pod("b", 300)],
    );
    assert!(!plan.writes());
    assert_eq!(
        plan.service("db").unwrap().decision.master.as_deref(),
        Some("a")
    );
}

#[test]
fn failover_table() {
    let cases: Vec<(&str, Vec<PodFacts>, TransitionReason, &str)> = vec![
        (
            "the master is being deleted",
            vec![
                PodFacts {
                    deleting: true,
                    ..master(pod("a", 30), "db")
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::Deleted),
            "a is being deleted",
        ),
        (
            "the master was drained by its HSD's scale-down",
            vec![
                PodFacts {
                    draining: true,
                    ..master(pod("a", 30), "db")
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::Draining),
            "a is draining",
        ),
        (
            "the master is not ready",
            vec![
                PodFacts {
                    ready: false,
                    ..master(pod("a", 30), "db")
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::NotReady),
            "a is not Ready",
        ),
        (
            "the master lost its IP",
            vec![
                PodFacts {
                    has_ip: false,
                    ..master(pod("a", 30), "db")
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::NoIp),
            "a has no pod IP",
        ),
        (
            "the master is gone",
            vec![pod("b", 10)],
            TransitionReason::Master(Ineligible::Gone),
            "a is gone",
        ),
        (
            "a pod replaced under the master's name is another pod",
            vec![
                PodFacts {
                    uid: "uid-new".into(),
                    ..pod("a", 1)
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::Gone),
            "a is gone",
        ),
        (
            "the master is no longer selected",
            vec![
                PodFacts {
                    labels: labels(&[("app", "moved"), (DESIGNATION_LABEL, ACTIVE)]),
                    ..pod("a", 30)
                },
                pod("b", 10),
            ],
            TransitionReason::Master(Ineligible::Unselected),
            "a is no longer selected",
        ),
    ];
    for (name, pods, reason, words) in cases {
        let plan = run(vec![service("db", Some(record("a")))], pods);
        let svc = plan.service("db").unwrap();
        assert_eq!(labelled(&plan), vec!["b"], "{name}");
        assert_eq!(
            svc.transition,
            Some(Transition {
                from: Some(reference("a")),
                to: Some(reference("b")),
                reason,
            }),
            "{name}"
        );
        let record = written(svc);
        assert_eq!((record.epoch, record.failovers), (2, 1), "{name}");
        assert_eq!(record.unfenced, vec![reference("a")], "{name}");
        assert_eq!(record.since.as_deref(), Some(now().to_string().as_str()));
        // The former master is fenced, whatever the view says of it (gone, or elsewhere).
        assert!(fenced(&plan).contains(&"a"), "{name}: {:?}", fenced(&plan));
        assert_eq!(
            svc.clear_unfenced.as_ref().map(|r| r.unfenced.len()),
            Some(0),
            "{name}"
        );
        assert_eq!(reasons(svc), vec!["MasterFailover"], "{name}");
        assert!(
            svc.events[0].note.contains(words),
            "{name}: {}",
            svc.events[0].note
        );
        assert_eq!(svc.decision.action, "failover a -> b", "{name}");
    }
}

#[test]
fn without_a_candidate_the_master_keeps_its_label_and_a_warning_is_sent_once() {
    let not_ready = PodFacts {
        ready: false,
        ..master(pod("a", 30), "db")
    };
    let others = PodFacts {
        ready: false,
        ..pod("b", 10)
    };
    let plan = run(
        vec![service("db", Some(record("a")))],
        vec![not_ready.clone(), others.clone()],
    );
    let svc = plan.service("db").unwrap();
    assert!(svc.transition.is_none());
    assert!(plan.fences.is_empty() && plan.labels.is_empty());
    assert_eq!(reasons(svc), vec!["NoEligiblePod"]);
    let record = written(svc).clone();
    assert!(
        record
            .warning
            .as_deref()
            .unwrap()
            .starts_with("NoEligiblePod: the master a is not Ready")
    );
    // The next pass, with the warning recorded, writes nothing and says nothing.
    let again = run(vec![service("db", Some(record))], vec![not_ready, others]);
    assert!(!again.writes());
    assert!(again.service("db").unwrap().events.is_empty());
    // The master gone and nothing to take over: the record stays as it is.
    let plan = run(
        vec![service(
            "db",
            Some(record_with_warning(
                "a",
                "NoEligiblePod: no selected pod is eligible (Ready, with a pod IP, not being deleted)",
            )),
        )],
        vec![PodFacts {
            ready: false,
            ..pod("b", 10)
        }],
    );
    assert!(!plan.writes(), "{plan:#?}");
}

fn record_with_warning(master: &str, warning: &str) -> Record {
    Record {
        warning: Some(warning.into()),
        ..record(master)
    }
}

#[test]
fn a_namespace_without_pods_gets_a_warning_and_the_selector_key() {
    let plan = run(vec![service("db", None)], Vec::new());
    let svc = plan.service("db").unwrap();
    assert_eq!(reasons(svc), vec!["NoEligiblePod"]);
    let write = svc.write.as_ref().unwrap();
    // The key goes in at once: the Service resolves to no pod rather than to all of them.
    assert_eq!(write.selector, SelectorChange::Add);
    assert!(write.record.as_ref().unwrap().master.is_none());
    assert!(plan.labels.is_empty());
}

#[test]
fn services_without_a_usable_selector_get_a_warning_and_nothing_else() {
    type Case = (&'static str, Option<BTreeMap<String, String>>, &'static str);
    let cases: Vec<Case> = vec![
        ("no selector", None, "it has no selector"),
        (
            "only our key",
            Some(labels(&[(DESIGNATION_LABEL, ACTIVE)])),
            "no key besides",
        ),
        ("an empty selector", Some(BTreeMap::new()), "no key besides"),
        (
            "our key with another value",
            Some(labels(&[("app", "db"), (DESIGNATION_LABEL, "standby")])),
            "only \"active\" is managed",
        ),
    ];
    for (name, selector, words) in cases {
        let mut svc = service("db", None);
        svc.selector = selector;
        let plan = run(vec![svc.clone(), service("ok", None)], vec![pod("a", 1)]);
        let bad = plan.service("db").unwrap();
        assert_eq!(bad.role, Role::Invalid, "{name}");
        assert_eq!(reasons(bad), vec!["InvalidActiveStandbyService"], "{name}");
        assert!(
            bad.events[0].note.contains(words),
            "{name}: {}",
            bad.events[0].note
        );
        assert_eq!(bad.write.as_ref().unwrap().selector, SelectorChange::Keep);
        // The other Service of the namespace is served all the same.
        assert_eq!(labelled(&plan), vec!["a"], "{name}");
        assert_eq!(
            plan.service("ok").unwrap().decision.master.as_deref(),
            Some("a")
        );
        // Once recorded, the warning is not repeated.
        svc.record = Some(Ok(written(bad).clone()));
        let again = run(vec![svc], vec![pod("a", 1)]);
        assert!(!again.writes(), "{name}");
        assert!(again.service("db").unwrap().events.is_empty(), "{name}");
    }
}

#[test]
fn services_with_the_same_pods_share_one_master() {
    let plan = run(
        vec![service("db", None), service("db-headless", None)],
        vec![pod("a", 5), pod("b", 50)],
    );
    assert_eq!(labelled(&plan), vec!["b"]);
    assert_eq!(plan.labels[0].services, vec!["db", "db-headless"]);
    for name in ["db", "db-headless"] {
        let svc = plan.service(name).unwrap();
        assert_eq!(svc.decision.master.as_deref(), Some("b"), "{name}");
        assert_eq!(reasons(svc), vec!["MasterElected"], "{name}");
    }
    // Both recorded: nothing to do.
    let plan = run(
        vec![
            service("db", Some(record("b"))),
            service("db-headless", Some(record("b"))),
        ],
        vec![pod("a", 5), master(pod("b", 50), "db")],
    );
    assert!(!plan.writes());
}

#[test]
fn two_services_that_would_need_different_masters_among_shared_pods_get_a_conflict() {
    // db's master is a (recorded first), db-headless recorded b: both eligible, both among the
    // shared pods. db-headless gives way: one labelled pod, and a Warning.
    let mut second = record("b");
    second.since = Some(at(10).to_string());
    let plan = run(
        vec![
            service("db", Some(record("a"))),
            service("db-headless", Some(second)),
        ],
        vec![
            master(pod("a", 30), "db"),
            master(pod("b", 30), "db-headless"),
        ],
    );
    assert_eq!(fenced(&plan), vec!["b"]);
    assert!(plan.labels.is_empty(), "a is labelled already");
    let svc = plan.service("db-headless").unwrap();
    assert_eq!(svc.decision.master.as_deref(), Some("a"));
    assert_eq!(
        svc.transition.as_ref().unwrap().reason,
        TransitionReason::Conflict
    );
    assert!(
        reasons(svc).contains(&"ActiveStandbyConflict"),
        "{:?}",
        reasons(svc)
    );
    let conflict = svc
        .events
        .iter()
        .find(|e| e.reason == "ActiveStandbyConflict")
        .unwrap();
    assert!(
        conflict.note.contains("Service db, whose master is a"),
        "{}",
        conflict.note
    );
    // Resolved by the change itself: nothing stays recorded, so the next pass is quiet.
    assert_eq!(written(svc).warning, None);
    assert!(plan.service("db").unwrap().write.is_none());
}

#[test]
fn overlapping_services_get_masters_outside_each_others_pods() {
    // db selects {a, b}, cache selects {b, c}: db takes a (longest ready of its own), and cache
    // may not take b (it is db's too: db would resolve to two), so it takes c.
    let pods = vec![
        PodFacts {
            labels: labels(&[("app", "db"), ("db", "y")]),
            ..pod("a", 30)
        },
        PodFacts {
            labels: labels(&[("app", "db"), ("db", "y"), ("cache", "y")]),
            ..pod("b", 300)
        },
        PodFacts {
            labels: labels(&[("app", "db"), ("cache", "y")]),
            ..pod("c", 1)
        },
    ];
    let mut db = service("db", None);
    db.selector = Some(labels(&[("db", "y")]));
    let mut cache = service("cache", None);
    cache.selector = Some(labels(&[("cache", "y")]));
    let plan = run(vec![db, cache], pods.clone());
    // Decided by name first (no records): cache takes b (longest ready), and b is among db's
    // pods, so db shares it: one labelled pod serves both.
    assert_eq!(labelled(&plan), vec!["b"]);
    assert_eq!(plan.labels[0].services, vec!["cache", "db"]);
    assert_eq!(
        plan.service("cache").unwrap().decision.master.as_deref(),
        Some("b")
    );
    assert_eq!(
        plan.service("db").unwrap().decision.master.as_deref(),
        Some("b")
    );
    // Recorded otherwise (db on a, cache on c, both eligible): each keeps its own, since
    // neither master is among the other's pods, and b is left to neither.
    let mut pods = pods;
    pods[0] = master(pods[0].clone(), "db");
    pods[2] = master(pods[2].clone(), "cache");
    let mut db = service("db", Some(record("a")));
    db.selector = Some(labels(&[("db", "y"), (DESIGNATION_LABEL, ACTIVE)]));
    let mut cache = service("cache", Some(record("c")));
    cache.selector = Some(labels(&[("cache", "y"), (DESIGNATION_LABEL, ACTIVE)]));
    let plan = run(vec![db, cache], pods.clone());
    assert!(!plan.writes(), "{plan:#?}");
    let cache = plan.service("cache").unwrap();
    assert_eq!(cache.decision.master.as_deref(), Some("c"));
    let b = cache.decision.pods.iter().find(|p| p.name == "b").unwrap();
    assert_eq!(b.role, "excluded");
    assert_at_most_one_master_per_service(&namespace_after(&namespace(Vec::new(), pods), &plan));
}

#[test]
fn a_service_whose_only_candidates_are_anothers_gets_a_conflict_and_no_master() {
    // db selects {a, b}; cache selects {b}. db's master is a; cache could only take b, which
    // would give db two.
    let pods = vec![
        master(
            PodFacts {
                labels: labels(&[("db", "y")]),
                ..pod("a", 30)
            },
            "db",
        ),
        PodFacts {
            labels: labels(&[("db", "y"), ("cache", "y")]),
            ..pod("b", 300)
        },
    ];
    let mut db = service("db", Some(record("a")));
    db.selector = Some(labels(&[("db", "y"), (DESIGNATION_LABEL, ACTIVE)]));
    let mut cache = service("cache", None);
    cache.selector = Some(labels(&[("cache", "y")]));
    let plan = run(vec![db, cache], pods);
    assert!(plan.labels.is_empty() && plan.fences.is_empty());
    let cache = plan.service("cache").unwrap();
    assert_eq!(cache.decision.master, None);
    assert_eq!(reasons(cache), vec!["ActiveStandbyConflict"]);
    assert_eq!(cache.decision.pods[0].role, "excluded");
}

#[test]
fn stray_labels_among_a_services_pods_are_fenced_and_others_left_alone() {
    let plan = run(
        vec![service("db", Some(record("a")))],
        vec![
            master(pod("a", 30), "db"),
            // Labelled by someone: among db's pods, so it would take traffic.
            PodFacts {
                labels: labels(&[("app", "db"), (DESIGNATION_LABEL, ACTIVE)]),
                ..pod("b", 10)
            },
            // Labelled by someone, outside every active-standby Service: not ours to touch.
            PodFacts {
                labels: labels(&[("app", "web"), (DESIGNATION_LABEL, ACTIVE)]),
                ..pod("c", 10)
            },
            // Labelled by this tool for a Service that is gone: cleaned up.
            master(
                PodFacts {
                    labels: labels(&[("app", "web")]),
                    ..pod("d", 10)
                },
                "deleted-service",
            ),
        ],
    );
    assert_eq!(fenced(&plan), vec!["b", "d"]);
    assert!(plan.labels.is_empty());
    assert!(plan.service("db").unwrap().write.is_none());
}

#[test]
fn removing_the_annotation_cleans_up_the_key_we_added_and_the_labels() {
    for (selector_added, change) in [
        (true, SelectorChange::Remove),
        (false, SelectorChange::Keep),
    ] {
        let mut svc = service(
            "db",
            Some(Record {
                selector_added,
                unfenced: vec![reference("old")],
                ..record("a")
            }),
        );
        svc.enabled = false;
        let plan = run(
            vec![svc],
            vec![
                master(pod("a", 30), "db"),
                pod("b", 10),
                PodFacts {
                    labels: labels(&[("app", "db"), (DESIGNATION_LABEL, ACTIVE)]),
                    ..pod("c", 10)
                },
            ],
        );
        let cleanup = plan.service("db").unwrap();
        assert_eq!(cleanup.role, Role::Cleanup);
        let write = cleanup.write.as_ref().unwrap();
        assert_eq!(write.record, None, "the record is removed");
        assert_eq!(write.selector, change);
        assert_eq!(fenced(&plan), vec!["a", "c", "old"]);
        assert!(plan.labels.is_empty());
        assert_eq!(reasons(cleanup), vec!["ActiveStandbyDisabled"]);
    }
    // A Service that was never active-standby is not in the plan at all.
    let mut never = service("web", None);
    never.enabled = false;
    let plan = run(vec![never], vec![pod("a", 1)]);
    assert!(plan.services.is_empty() && !plan.writes());
}

#[test]
fn a_cleaned_up_service_leaves_the_master_it_shares_with_an_active_one() {
    let mut gone = service("db-old", Some(record("a")));
    gone.enabled = false;
    let plan = run(
        vec![gone, service("db", Some(record("a")))],
        vec![master(pod("a", 30), "db"), pod("b", 1)],
    );
    assert!(fenced(&plan).is_empty(), "{:?}", fenced(&plan));
    assert!(plan.labels.is_empty());
}

#[test]
fn an_unreadable_record_starts_over_with_a_warning() {
    let mut svc = service("db", None);
    svc.record = Some(Err("paia.tech/active-standby is not a record: EOF".into()));
    svc.selector = Some(labels(&[("app", "db"), (DESIGNATION_LABEL, ACTIVE)]));
    let plan = run(vec![svc], vec![master(pod("a", 30), "db"), pod("b", 60)]);
    let svc = plan.service("db").unwrap();
    assert_eq!(
        reasons(svc),
        vec!["InvalidActiveStandbyRecord", "MasterElected"]
    );
    // The labelled pod... is not recorded: b ranks first and a is fenced as a stray.
    assert_eq!(labelled(&plan), vec!["b"]);
    assert_eq!(fenced(&plan), vec!["a"]);
    // The key was there before this record: it stays the user's.
    assert!(!written(svc).selector_added);
}

#[test]
fn a_label_waits_for_every_service_that_selects_the_pod_to_confirm_its_record() {
    // Both recorded b, b lost its label (a writer died between fence and label): b is labelled
    // again after both records are confirmed unchanged.
    let plan = run(
        vec![
            service("db", Some(record("b"))),
            service("db-headless", Some(record("b"))),
        ],
        vec![pod("a", 5), pod("b", 50)],
    );
    assert_eq!(labelled(&plan), vec!["b"]);
    assert_eq!(plan.labels[0].resource_version, "10");
    for name in ["db", "db-headless"] {
        let svc = plan.service(name).unwrap();
        assert!(svc.write.is_none() && svc.confirm, "{name}");
        assert_eq!(svc.decision.action, "label b", "{name}");
        assert!(svc.events.is_empty(), "{name}");
    }
}

#[test]
fn a_former_master_chosen_again_keeps_its_label_and_leaves_the_unfenced_list() {
    // a was deposed (unfenced), then b failed while a recovered.
    let rec = Record {
        master: Some(reference("b")),
        epoch: 2,
        failovers: 1,
        unfenced: vec![reference("a")],
        ..record("b")
    };
    let plan = run(
        vec![service("db", Some(rec))],
        vec![
            pod("a", 5),
            PodFacts {
                deleting: true,
                ..master(pod("b", 50), "db")
            },
        ],
    );
    assert_eq!(fenced(&plan), vec!["b"]);
    assert_eq!(labelled(&plan), vec!["a"]);
    let record = written(plan.service("db").unwrap());
    assert_eq!(record.unfenced, vec![reference("b")]);
    assert_eq!((record.epoch, record.failovers), (3, 2));
}

#[test]
fn fences_are_marked_with_the_time_so_every_fence_changes_the_pod() {
    let plan = run(vec![service("db", Some(record("a")))], vec![pod("b", 10)]);
    assert_eq!(plan.fences.len(), 1);
    assert!(
        plan.fences[0]
            .mark
            .starts_with(&format!("fenced at {}", now()))
    );
    assert_eq!(plan.labels[0].mark, "master of db (epoch 2)");
}

// Properties over random namespaces.

/// The namespace after the plan was carried out (every write succeeded), at `now`.
fn namespace_after(before: &ObservedNamespace, plan: &NamespacePlan) -> ObservedNamespace {
    let mut after = before.clone();
    for pod in after.pods.iter_mut() {
        let bump = |pod: &mut PodFacts| {
            let rv: u64 = pod.resource_version.parse().unwrap_or(0);
            pod.resource_version = (rv + 1).to_string();
        };
        if let Some(fence) = plan.fences.iter().find(|f| pod.is(&f.pod)) {
            pod.labels.remove(DESIGNATION_LABEL);
            pod.mark = Some(fence.mark.clone());
            bump(pod);
        }
        if let Some(label) = plan.labels.iter().find(|l| pod.is(&l.pod)) {
            pod.labels.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
            pod.mark = Some(label.mark.clone());
            bump(pod);
        }
    }
    for service in after.services.iter_mut() {
        let Some(planned) = plan.service(&service.name) else {
            continue;
        };
        if let Some(write) = &planned.write {
            service.record = write.record.clone().map(Ok);
            let selector = service.selector.get_or_insert_with(BTreeMap::new);
            match write.selector {
                SelectorChange::Add => {
                    selector.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
                }
                SelectorChange::Remove => {
                    selector.remove(DESIGNATION_LABEL);
                }
                SelectorChange::Keep => {}
            }
        }
        if let Some(cleared) = &planned.clear_unfenced {
            service.record = Some(Ok(cleared.clone()));
        }
    }
    after
}

fn assert_at_most_one_master_per_service(namespace: &ObservedNamespace) {
    for service in namespace.services.iter().filter(|s| s.enabled) {
        let Ok(selector) = user_selector(service) else {
            continue;
        };
        let labelled: Vec<&str> = namespace
            .pods
            .iter()
            .filter(|p| selects(&selector, p) && p.labelled())
            .map(|p| p.name.as_str())
            .collect();
        assert!(
            labelled.len() <= 1,
            "{} resolves to {labelled:?}",
            service.name
        );
    }
}

const KEYS: [&str; 3] = ["x", "y", "z"];

fn arbitrary_pod() -> impl Strategy<Value = (u8, bool, bool, bool, u8, bool, u8)> {
    // (labels bitset over KEYS, ready, ip, deleting, busy, labelled, ready minutes)
    (
        0..8u8,
        any::<bool>(),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.15),
        0..3u8,
        prop::bool::weighted(0.3),
        0..60u8,
    )
}

fn arbitrary_service() -> impl Strategy<Value = (u8, bool, Option<u8>, bool)> {
    // (selector bitset over KEYS, enabled, recorded master index, selector has our key)
    (
        0..8u8,
        prop::bool::weighted(0.8),
        prop::option::of(0..8u8),
        any::<bool>(),
    )
}

fn build(
    pods: &[(u8, bool, bool, bool, u8, bool, u8)],
    services: &[(u8, bool, Option<u8>, bool)],
) -> ObservedNamespace {
    let pods: Vec<PodFacts> = pods
        .iter()
        .enumerate()
        .map(
            |(i, (keys, ready, ip, deleting, busy, labelled, minutes))| {
                let mut labels: BTreeMap<String, String> = KEYS
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| keys & (1 << k) != 0)
                    .map(|(_, k)| (k.to_string(), "1".to_string()))
                    .collect();
                labels.insert("app".into(), "db".into());
                if *labelled {
                    labels.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
                }
                PodFacts {
                    name: format!("p{i}"),
                    uid: format!("u{i}"),
                    resource_version: "1".into(),
                    labels,
                    ready: *ready,
                    ready_since: Some(at(i64::from(*minutes))),
                    has_ip: *ip,
                    deleting: *deleting,
                    draining: false,
                    busy: [Busyness::Idle, Busyness::Unknown, Busyness::Busy][*busy as usize],
                    mark: labelled.then(|| format!("{MASTER_MARK_PREFIX}s0 (epoch 1)")),
                }
            },
        )
        .collect();
    let services = services
        .iter()
        .enumerate()
        .map(|(i, (keys, enabled, recorded, has_key))| {
            let mut selector: BTreeMap<String, String> = KEYS
                .iter()
                .enumerate()
                .filter(|(k, _)| keys & (1 << k) != 0)
                .map(|(_, k)| (k.to_string(), "1".to_string()))
                .collect();
            // Every Service selects app=db (so it has a usable selector); half of them more.
            selector.insert("app".into(), "db".into());
            if *has_key {
                selector.insert(DESIGNATION_LABEL.into(), ACTIVE.into());
            }
            ServiceFacts {
                name: format!("s{i}"),
                uid: format!("su{i}"),
                resource_version: "1".into(),
                enabled: *enabled,
                selector: Some(selector),
                record: recorded.map(|m| {
                    Ok(Record {
                        master: Some(PodRef {
                            name: format!("p{m}"),
                            uid: format!("u{m}"),
                        }),
                        epoch: 1,
                        since: Some(at(i64::from(m)).to_string()),
                        selector_added: true,
                        ..Record::default()
                    })
                }),
            }
        })
        .collect();
    ObservedNamespace {
        namespace: "ns".into(),
        services,
        pods,
    }
}

proptest! {
    /// Whatever the labels, records and selectors, once a plan is carried out no active-standby
    /// Service resolves to two labelled pods, every labelled master is eligible or was already
    /// labelled, and the next plan writes nothing.
    #[test]
    fn never_two_masters_and_passes_converge(
        pods in proptest::collection::vec(arbitrary_pod(), 0..8),
        services in proptest::collection::vec(arbitrary_service(), 0..4),
    ) {
        let before = build(&pods, &services);
        let first = plan(&before, now());
        for label in &first.labels {
            let pod = before.pods.iter().find(|p| p.is(&label.pod)).unwrap();
            prop_assert!(pod.ineligible().is_none(), "labelled an ineligible pod: {label:?}");
            prop_assert!(!first.fences.iter().any(|f| f.pod == label.pod), "fenced and labelled: {label:?}");
        }
        let after = namespace_after(&before, &first);
        assert_at_most_one_master_per_service(&after);
        let second = plan(&after, now());
        prop_assert!(!second.writes(), "not converged:\n{first:#?}\n{second:#?}");
        for service in &second.services {
            prop_assert!(service.events.is_empty(), "{:?}", service.events);
        }
    }

    /// A Service alone in its namespace keeps an eligible recorded master, whatever the others.
    #[test]
    fn an_eligible_master_is_never_moved(
        pods in proptest::collection::vec(arbitrary_pod(), 1..8),
        pick in 0..8usize,
    ) {
        let mut namespace = build(&pods, &[(0, true, None, true)]);
        let m = pick % namespace.pods.len();
        namespace.pods[m].ready = true;
        namespace.pods[m].has_ip = true;
        namespace.pods[m].deleting = false;
        let name = namespace.pods[m].name.clone();
        namespace.services[0].record = Some(Ok(Record {
            master: Some(namespace.pods[m].reference()),
            epoch: 1,
            selector_added: true,
            ..Record::default()
        }));
        let plan = plan(&namespace, now());
        let svc = plan.service("s0").unwrap();
        prop_assert_eq!(svc.decision.master.as_deref(), Some(name.as_str()));
        prop_assert!(svc.transition.is_none());
    }
}
