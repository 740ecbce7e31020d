//! edgenetd against a describe endpoint that misbehaves on purpose: answers
//! that would stop the polls (a huge `Retry-After`, a state id too long to
//! send back), storm them (answers at once that change nothing), lie about
//! their id, or send the agent to another host. Each must leave the applied
//! state as it is, keep the polls going at a bounded rate, and let the next
//! valid answer through.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// What a misbehaving server answers to every poll after the first.
type Misbehaviour = dyn Fn() -> Answer + Send + Sync;

const V1_ALL_F: &str = "v1-ffffffffffffffffffffffffffffffff";

/// Answers `initial` to a poll without `StateId`, `then` to any other.
fn first_then(
    initial: (String, Vec<u8>),
    then: impl Fn() -> Answer + Send + Sync + 'static,
) -> impl Fn(&str) -> Answer + Send + Sync + 'static {
    move |target| match query_param(target, "StateId").as_deref() {
        None | Some("") => Answer::Now(view_answer(&initial.0, &initial.1)),
        Some(_) => then(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_waits_no_longer_than_the_backoff_ceiling() {
    let busy = http(
        "503 Service Unavailable",
        &[("retry-after", "99999999999")],
        br#"{"Error":{"Code":"RequestLimitExceeded","Message":"busy"},"RequestId":"r"}"#,
    );
    let (server, url) = HostileServer::start("127.0.0.1", move |_| Answer::Now(busy.clone())).await;
    let agent = Agent::start(&url, |_| {});
    eventually(Duration::from_secs(10), || server.requests() >= 1).await;
    let (id, body) = answer_for(&sample_model(), NODE);
    let expected = id.clone();
    server.set(move |_| Answer::Now(view_answer(&id, &body)));
    // The ceiling is 1 s here: the view must come long before 15 s.
    agent.wait_applied(&expected).await;
    assert!(agent.metrics.polls("server_error") >= 1);
}

/// Requests in `WINDOW` against a server that answers at once: thousands
/// without a backoff, a handful with one (0.5 s doubling to 1 s here).
const WINDOW: Duration = Duration::from_secs(3);
const MOST_POLLS_IN_WINDOW: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_at_once_without_a_change_are_backed_off() {
    let initial = answer_for(&sample_model(), NODE);
    let (held_id, held_body) = initial.clone();
    let (changed_id, changed_body) = answer_for(&with_route(sample_model(), "10.9.0.0/16"), NODE);
    let lying = body_with_id(V1_ALL_F, &view_of(&changed_body));
    // Where the redirect points: a server that sends the view already held.
    let (elsewhere, elsewhere_url) = HostileServer::start(
        "127.0.0.1",
        first_then(initial.clone(), move || {
            Answer::Now(view_answer(&held_id, &held_body))
        }),
    )
    .await;
    let etag = format!("\"{}\"", initial.0);
    let cases: Vec<(&str, Box<Misbehaviour>)> = vec![
        ("the id already held", {
            let (id, body) = initial.clone();
            Box::new(move || Answer::Now(view_answer(&id, &body)))
        }),
        ("an instant 304", {
            let etag = etag.clone();
            Box::new(move || Answer::Now(http("304 Not Modified", &[("etag", &etag)], b"")))
        }),
        ("a 304 with a body", {
            let (etag, body) = (etag.clone(), changed_body.clone());
            Box::new(move || Answer::Now(http("304 Not Modified", &[("etag", &etag)], &body)))
        }),
        ("a StateId that is not the view's", {
            Box::new(move || Answer::Now(view_answer(V1_ALL_F, &lying)))
        }),
        ("an unusable body", {
            let id = changed_id.clone();
            Box::new(move || Answer::Now(view_answer(&id, b"{\"StateId\": 7")))
        }),
        ("a redirect", {
            let location = elsewhere_url.clone();
            Box::new(move || Answer::Now(http("302 Found", &[("location", &location)], b"")))
        }),
    ];
    for (case, then) in cases {
        let (server, url) =
            HostileServer::start("127.0.0.1", first_then(initial.clone(), then)).await;
        let agent = Agent::start(&url, |_| {});
        agent.wait_applied(&initial.0).await;
        let followed_before = elsewhere.requests();
        let polls = server.requests_during(WINDOW).await + elsewhere.requests() - followed_before;
        println!("{case}: {polls} polls in {WINDOW:?}");
        assert!(
            polls <= MOST_POLLS_IN_WINDOW,
            "{case}: {polls} polls in {WINDOW:?}"
        );
        assert_eq!(
            agent.applied_id().as_deref(),
            Some(initial.0.as_str()),
            "{case}"
        );
        agent.assert_alive(case);
    }
}

/// The same rule must not slow a server that holds its polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_polls_are_answered_without_backoff() {
    let initial = answer_for(&sample_model(), NODE);
    let etag = format!("\"{}\"", initial.0);
    let (server, url) = HostileServer::start(
        "127.0.0.1",
        first_then(initial.clone(), move || {
            let not_modified = http("304 Not Modified", &[("etag", &etag)], b"");
            Answer::After(Duration::from_millis(1100), not_modified)
        }),
    )
    .await;
    // A backoff after any of these polls would draw from 0..60 s.
    let agent = Agent::start(&url, |config| {
        config.backoff_min = Duration::from_secs(60);
        config.backoff_max = Duration::from_secs(60);
    });
    agent.wait_applied(&initial.0).await;
    let polls = server.requests_during(Duration::from_millis(4500)).await;
    assert!(polls >= 3, "{polls} held polls in 4.5 s");
    assert!(agent.metrics.polls("not_modified") >= 2);
}

fn view_of(body: &[u8]) -> Value {
    let answer: Value = serde_json::from_slice(body).unwrap();
    answer["View"].clone()
}

/// Switches the server to `answer` and waits for three more polls.
async fn three_polls_of(server: &HostileServer, answer: Vec<u8>) {
    let before = server.requests();
    server.set(move |_| Answer::Now(answer.clone()));
    eventually(Duration::from_secs(20), || server.requests() >= before + 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_ids_out_of_the_grammar_are_refused_and_never_sent() {
    let (first_id, first_body) = answer_for(&sample_model(), NODE);
    let (server, url) = HostileServer::start("127.0.0.1", {
        let answer = view_answer(&first_id, &first_body);
        move |_| Answer::Now(answer.clone())
    })
    .await;
    let agent = Agent::start(&url, |config| {
        config.backoff_max = Duration::from_millis(300)
    });
    agent.wait_applied(&first_id).await;

    let (_, changed_body) = answer_for(&with_route(sample_model(), "10.9.0.0/16"), NODE);
    let changed = view_of(&changed_body);
    let hex = "0123456789abcdef0123456789abcdef";
    let hostile_ids = [
        format!("v1-{}", "f".repeat(65_576)),
        format!("v1-{}", "a".repeat(297)),
        format!("v1-{}", hex.to_uppercase()),
        format!("v3-{hex}"),
    ];
    for id in &hostile_ids {
        let seen = server.targets().len();
        three_polls_of(&server, view_answer(id, &body_with_id(id, &changed))).await;
        assert_eq!(
            agent.applied_id().as_deref(),
            Some(first_id.as_str()),
            "a {}-character id was applied",
            id.len()
        );
        for target in &server.targets()[seen..] {
            assert!(target.len() < 2048, "a {}-byte request", target.len());
            let sent = query_param(target, "StateId");
            assert_eq!(sent.as_deref(), Some(first_id.as_str()));
        }
        agent.assert_alive("a hostile id");
    }
    assert!(agent.metrics.polls("bad_answer") >= 3 * hostile_ids.len() as u64);

    // The next valid answer is taken as if nothing had happened.
    let (changed_id, changed_body) = answer_for(&with_route(sample_model(), "10.9.0.0/16"), NODE);
    three_polls_of(&server, view_answer(&changed_id, &changed_body)).await;
    agent.wait_applied(&changed_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_id_that_does_not_match_the_view_is_refused() {
    let (first_id, first_body) = answer_for(&sample_model(), NODE);
    let (server, url) = HostileServer::start("127.0.0.1", {
        let answer = view_answer(&first_id, &first_body);
        move |_| Answer::Now(answer.clone())
    })
    .await;
    let agent = Agent::start(&url, |config| {
        config.backoff_max = Duration::from_millis(300)
    });
    agent.wait_applied(&first_id).await;

    let (changed_id, changed_body) = answer_for(&with_route(sample_model(), "10.9.0.0/16"), NODE);
    let lying = body_with_id(V1_ALL_F, &view_of(&changed_body));
    three_polls_of(&server, view_answer(V1_ALL_F, &lying)).await;
    assert_eq!(agent.applied_id().as_deref(), Some(first_id.as_str()));
    assert!(agent.metrics.polls("bad_answer") >= 3);

    three_polls_of(&server, view_answer(&changed_id, &changed_body)).await;
    agent.wait_applied(&changed_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let (first_id, first_body) = answer_for(&sample_model(), NODE);
    let (changed_id, changed_body) = answer_for(&with_route(sample_model(), "10.9.0.0/16"), NODE);
    // Another host (another loopback address) with another view.
    let (elsewhere, elsewhere_url) = HostileServer::start("127.0.0.2", move |_| {
        Answer::Now(view_answer(&changed_id, &changed_body))
    })
    .await;
    let (server, url) = HostileServer::start("127.0.0.1", {
        let answer = view_answer(&first_id, &first_body);
        move |_| Answer::Now(answer.clone())
    })
    .await;
    let agent = Agent::start(&url, |config| {
        config.backoff_max = Duration::from_millis(300)
    });
    agent.wait_applied(&first_id).await;

    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
    ] {
        three_polls_of(&server, http(status, &[("location", &elsewhere_url)], b"")).await;
    }
    assert_eq!(elsewhere.requests(), 0, "a redirect was followed");
    assert_eq!(agent.applied_id().as_deref(), Some(first_id.as_str()));
    assert!(
        agent.metrics.polls("bad_answer") >= 9,
        "{}",
        agent.metrics.render()
    );
    agent.assert_alive("redirects");
}

/// An id the kernel recorded before ids were checked (or that someone
/// wrote there) is not sent either: the agent asks for a full view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_id_read_from_the_kernel_is_not_sent() {
    use std::sync::Arc;

    use edgenet_agent::ops::metrics::Metrics;
    use edgenet_agent::snapshot::Feedback;
    use edgenet_agent::source::poller::{Poller, PollerConfig};
    use edgenet_auth::ClockSkew;
    use tokio::sync::watch;

    let (id, body) = answer_for(&sample_model(), NODE);
    let (server, url) =
        HostileServer::start("127.0.0.1", move |_| Answer::Now(view_answer(&id, &body))).await;
    let recorded = format!("v1-{}", "f".repeat(65_576));
    let mut config = PollerConfig::new(NODE, vec![url]);
    config.wait_seconds = 1;
    let poller = Poller::new(config, None, Arc::new(ClockSkew::new()), Metrics::new()).unwrap();
    let (snapshots, mut received) = watch::channel(None);
    let (_feedback, feedback) = watch::channel(Feedback {
        applied_state_id: Some(recorded.clone()),
        apply_error: None,
    });
    let task = tokio::spawn(poller.run(Some(recorded), snapshots, feedback));
    tokio::time::timeout(Duration::from_secs(10), received.changed())
        .await
        .expect("a view within 10 s")
        .unwrap();
    task.abort();
    let first = &server.targets()[0];
    assert_eq!(query_param(first, "StateId").as_deref(), Some(""));
    assert_eq!(query_param(first, "AppliedStateId"), None);
}
