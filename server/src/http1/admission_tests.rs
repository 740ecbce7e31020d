use std::net::Ipv4Addr;

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

/// A connection task that never ends on its own, bound to its ticket.
fn connection(admission: &Arc<Admission>, peer: IpAddr) -> tokio::task::JoinHandle<()> {
    let ticket = admission.admit(peer).expect("admitted");
    let binder = ticket.binder();
    let task = tokio::spawn(async move {
        let _ticket = ticket;
        std::future::pending::<()>().await;
    });
    binder.bind(task.abort_handle());
    task
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn at_the_budget_the_largest_source_pays_with_its_longest_waiting() {
    let admission = Admission::new(4);
    let other = connection(&admission, ip(1));
    let crowd: Vec<_> = (0..3).map(|_| connection(&admission, ip(2))).collect();
    assert_eq!(admission.open(), 4);
    // The newcomer is from the small source; the crowd's oldest goes.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let newcomer = connection(&admission, ip(1));
    settle().await;
    assert!(crowd[0].is_finished(), "the longest-waiting of the crowd");
    assert!(!crowd[1].is_finished() && !crowd[2].is_finished());
    assert!(!other.is_finished() && !newcomer.is_finished());
    assert_eq!((admission.open(), admission.pending_evictions()), (4, 0));
}

#[tokio::test]
async fn a_connection_being_handled_is_never_evicted() {
    let admission = Admission::new(2);
    let busy = admission.admit(ip(1)).unwrap();
    assert!(busy.server_turn());
    let waiting = connection(&admission, ip(2));
    let third = connection(&admission, ip(3));
    settle().await;
    assert!(waiting.is_finished());
    // Only busy connections and one waiting newcomer: that one goes next,
    // and once only busy ones are left, a newcomer is refused.
    let fourth = connection(&admission, ip(4));
    settle().await;
    assert!(third.is_finished() && !fourth.is_finished());
    let fifth = admission.admit(ip(5)).expect("fourth was waiting: evicted");
    settle().await;
    assert!(fourth.is_finished());
    assert!(fifth.server_turn());
    assert_eq!(admission.admit(ip(6)).unwrap_err(), Refused { budget: 2 });
    drop(fifth);
    assert!(admission.admit(ip(6)).is_ok());
    drop(busy);
}

#[tokio::test]
async fn an_evicted_ticket_cannot_take_its_turn_and_gives_its_place_back() {
    let admission = Admission::new(1);
    let first = admission.admit(ip(1)).unwrap();
    let binder = first.binder();
    let (tx, rx) = tokio::sync::oneshot::channel::<Ticket>();
    let task = tokio::spawn(async move {
        let _ = rx.await;
        std::future::pending::<()>().await;
    });
    binder.bind(task.abort_handle());
    let second = admission.admit(ip(2)).unwrap();
    // Evicted while its task had not yet taken the ticket: the ticket says so.
    assert!(!first.server_turn() && !first.client_turn());
    assert_eq!(admission.pending_evictions(), 1);
    drop(tx);
    drop(first);
    assert_eq!((admission.open(), admission.pending_evictions()), (1, 0));
    assert!(second.client_turn());
}

#[tokio::test]
async fn relieve_closes_only_waiting_connections() {
    let admission = Admission::new(100);
    let waiting: Vec<_> = (0..3).map(|i| connection(&admission, ip(i))).collect();
    let busy = admission.admit(ip(9)).unwrap();
    assert!(busy.server_turn());
    assert_eq!(admission.relieve(10), 3);
    settle().await;
    assert!(waiting.iter().all(|t| t.is_finished()));
    assert_eq!(admission.open(), 1);
}

#[test]
fn reads_the_soft_limit() {
    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max processes             63704                63704                processes \n\
                  Max open files            1024                 524288               files     \n";
    assert_eq!(parse_open_files_soft_limit(limits), Some(1024));
    assert_eq!(
        parse_open_files_soft_limit("Max open files unlimited unlimited files\n"),
        None
    );
    assert!(open_files_soft_limit().is_some_and(|n| n > 0));
}

#[tokio::test]
async fn accept_failures_back_off_and_out_of_fds_relieves() {
    let admission = Admission::new(100);
    let waiting = connection(&admission, ip(1));
    let mut errors = AcceptErrors::default();
    let emfile = std::io::Error::from_raw_os_error(EMFILE);
    let pauses: Vec<Duration> = (0..10)
        .map(|_| errors.failed(&emfile, &admission))
        .collect();
    assert_eq!(pauses[0], FIRST_ACCEPT_PAUSE);
    assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*pauses.last().unwrap(), MAX_ACCEPT_PAUSE);
    settle().await;
    assert!(
        waiting.is_finished(),
        "out of descriptors: a waiting connection goes"
    );
    errors.recovered();
    let other = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
    assert_eq!(errors.failed(&other, &admission), FIRST_ACCEPT_PAUSE);
}
