//! End-to-end encryption between users of two servers (issue 16), with
//! matrix-sdk's own crypto: the invite, the join, the device keys queried
//! and one-time keys claimed over federation, the room keys sent as
//! to-device messages across servers, and messages decrypted both ways.

use chancery_testkit::{Backend, TestServer};

use crate::e2ee::{collect_texts, encryption, has, join, new_user, private_room, say, sync_until};

async fn encrypted_chat_across_servers(backend: Backend) {
    let a = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let b = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let alice = new_user(&a.base_url, "alice", encryption(false, false)).await;
    let bob = new_user(&b.base_url, "bob", encryption(false, false)).await;
    let (alice_texts, bob_texts) = (collect_texts(&alice), collect_texts(&bob));

    let room_id = private_room(&alice, &[&bob]).await;
    join(&bob, &room_id).await;
    sync_until(&[&alice, &bob], "both see the encrypted room with both joined", || async {
        let ready = |c: &matrix_sdk::Client| {
            c.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted() && r.joined_members_count() == 2)
        };
        ready(&alice) && ready(&bob)
    })
    .await;

    say(&alice, &room_id, "hello bob, from A").await;
    sync_until(&[&alice, &bob], "Bob decrypts Alice's message", || async { has(&bob_texts, "hello bob, from A") }).await;
    say(&bob, &room_id, "hello alice, from B").await;
    sync_until(&[&alice, &bob], "Alice decrypts Bob's message", || async { has(&alice_texts, "hello alice, from B") }).await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
on_both_backends!(encrypted_chat_across_servers);

/// The same with Synapse on the other side: a Chancery user and a Synapse
/// user, each with matrix-sdk's crypto, exchange encrypted messages.
async fn encrypted_chat_with_synapse(backend: Backend) {
    let chancery = TestServer::start_federating(backend, |_| {}).await.unwrap();
    let synapse = chancery_testkit::synapse::SynapseServer::start().await.unwrap();
    let alice = new_user(&chancery.base_url, "alice", encryption(false, false)).await;
    let sam = new_user(&synapse.base_url, "sam", encryption(false, false)).await;
    let (alice_texts, sam_texts) = (collect_texts(&alice), collect_texts(&sam));

    let room_id = private_room(&alice, &[&sam]).await;
    join(&sam, &room_id).await;
    // (Synapse sends no member counts without lazy loading: Sam's side is
    // checked by its joined state.)
    sync_until(&[&alice, &sam], "both see the encrypted room, Alice with both joined", || async {
        let alice_ready =
            alice.get_room(&room_id).is_some_and(|r| r.encryption_state().is_encrypted() && r.joined_members_count() == 2);
        let sam_ready = sam
            .get_room(&room_id)
            .is_some_and(|r| r.encryption_state().is_encrypted() && r.state() == matrix_sdk::RoomState::Joined);
        alice_ready && sam_ready
    })
    .await;
    say(&alice, &room_id, "hello sam, from chancery").await;
    sync_until(&[&alice, &sam], "Sam decrypts Alice's message", || async { has(&sam_texts, "hello sam, from chancery") }).await;
    say(&sam, &room_id, "hello alice, from synapse").await;
    sync_until(&[&alice, &sam], "Alice decrypts Sam's message", || async { has(&alice_texts, "hello alice, from synapse") })
        .await;
    chancery.stop().await.unwrap();
    synapse.stop();
}
on_both_backends!(encrypted_chat_with_synapse);
