//! Chat in a ring: user `u<i>` sends to `u<i+1>`, and every message is
//! checked to arrive once and in order.

use std::time::{Duration, Instant};

use client_sdk::{Client, Event, MessageState};
use futures_util::future::join_all;

/// Messages each user sends per round.
pub const EACH: usize = 5;

/// What a round saw.
pub struct Round {
    /// When each user got each of its messages of the round, in order.
    pub arrivals: Vec<Vec<Instant>>,
    /// Sessions that could not be resumed and logged in anew.
    pub relogins: usize,
}

/// Each user `u<i>` of `clients` (in that order) sends [`EACH`] messages to
/// the next user and waits until they are acknowledged and it got as
/// many from the previous user, in order, once.
pub async fn round(clients: &mut [Client], domain: &str, round: usize) -> Round {
    let n = clients.len();
    let runs = clients.iter_mut().enumerate().map(|(i, c)| async move {
        let to = format!("u{}@{domain}", (i + 1) % n);
        let mut waiting = std::collections::HashSet::new();
        for k in 0..EACH {
            let id = c
                .send_message(&to, &format!("r{round}-{i}-{k}"))
                .await
                .expect("send");
            waiting.insert(id);
        }
        let from = (i + n - 1) % n;
        let mut got = Vec::new();
        let mut arrivals = Vec::new();
        let mut relogins = 0;
        let deadline = Instant::now() + Duration::from_secs(90);
        while !waiting.is_empty() || got.len() < EACH {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next_event()).await {
                Ok(Some(Event::MessageState {
                    id,
                    state: MessageState::Acknowledged,
                })) => {
                    waiting.remove(&id);
                }
                Ok(Some(Event::Message(m))) if m.body.is_some() => {
                    arrivals.push(Instant::now());
                    got.push(m.body.unwrap_or_default());
                }
                Ok(Some(Event::Reconnected { resumed: false })) => {
                    // (named, so a failure's logs can be searched for it)
                    println!("u{i} round {round}: logged in again");
                    relogins += 1;
                }
                Ok(Some(_)) => {}
                other => panic!(
                    "u{i} round {round}: {} unacknowledged, got {got:?}: {other:?}",
                    waiting.len()
                ),
            }
        }
        let want: Vec<String> = (0..EACH).map(|k| format!("r{round}-{from}-{k}")).collect();
        assert_eq!(
            got, want,
            "u{i} got every message of u{from}, once, in order"
        );
        (arrivals, relogins)
    });
    let seen = join_all(runs).await;
    Round {
        relogins: seen.iter().map(|s| s.1).sum(),
        arrivals: seen.into_iter().map(|s| s.0).collect(),
    }
}
