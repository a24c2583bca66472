//! `key-share`: what the server does when a sender shares a room key with
//! a big encrypted room, the way matrix-sdk does it for a room whose
//! members it has no Olm sessions with: `/keys/query` of every member
//! (chunks of 250 users, sent at once), one `/keys/claim` of a
//! `signed_curve25519` key for every device, then `/sendToDevice` with one
//! `m.room.encrypted` message per device (chunks of 250 messages, one after
//! another).
//!
//! Every member's device uploads real device keys and one-time keys,
//! signed over canonical JSON with its own ed25519 key, so a server that
//! checks signatures accepts them. The to-device messages are shaped like
//! Olm pre-key messages but their ciphertext is random bytes: a server
//! never decrypts to-device messages, so what it stores and delivers costs
//! the same, and the client does not spend the measured time encrypting.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use vodozemac::olm::Account;

use super::{Ctx, bounded};
use crate::client::{Server, Session};
use crate::report::{Better, Outcome};
use crate::stats::{MIN_SAMPLES, Samples};

const OLM_ALGORITHM: &str = "m.olm.v1.curve25519-aes-sha2";
const MEGOLM_ALGORITHM: &str = "m.megolm.v1.aes-sha2";
const ONE_TIME_KEY_ALGORITHM: &str = "signed_curve25519";
const ENCRYPTED: &str = "m.room.encrypted";

/// Random bytes in each message's ciphertext: 768 bytes are 1,024 base64
/// characters, about an Olm pre-key message carrying an `m.room_key`.
const CIPHERTEXT_BYTES: usize = 768;

/// `/keys/query` requests matrix-sdk keeps out at once
/// (`send_outgoing_requests`).
const MAX_CONCURRENT_QUERIES: usize = 20;

/// Recipients whose `/sync` is read to check delivery: enough to catch a
/// server that drops or misroutes messages, few enough that verifying a
/// 1,000-member room stays cheap.
const SYNC_SAMPLE: usize = 20;

/// A member's (or the sender's) device and the keys it uploaded.
struct Device {
    session: Session,
    account: Account,
    curve25519: String,
    /// `keys` and `signatures` of the uploaded device keys, compared with
    /// what `/keys/query` returns.
    keys: Value,
    signatures: Value,
    /// Uploaded one-time keys not claimed yet: key id → public key.
    unclaimed: HashMap<String, String>,
}

impl Device {
    fn new(session: Session) -> Self {
        let account = Account::new();
        let ids = account.identity_keys();
        let curve25519 = ids.curve25519.to_base64();
        let keys = json!({
            format!("curve25519:{}", session.device_id): curve25519,
            format!("ed25519:{}", session.device_id): ids.ed25519.to_base64(),
        });
        Device { session, account, curve25519, keys, signatures: Value::Null, unclaimed: HashMap::new() }
    }

    /// The signed `device_keys` object of `/keys/upload`.
    fn device_keys(&mut self) -> Value {
        let unsigned = json!({
            "user_id": self.session.user_id,
            "device_id": self.session.device_id,
            "algorithms": [OLM_ALGORITHM, MEGOLM_ALGORITHM],
            "keys": self.keys,
        });
        let signed = sign(&self.account, &self.session, unsigned);
        self.signatures = signed["signatures"].clone();
        signed
    }

    /// `count` new signed one-time keys (`one_time_keys` of `/keys/upload`),
    /// remembered as unclaimed.
    fn one_time_keys(&mut self, count: usize) -> Value {
        self.account.generate_one_time_keys(count);
        let mut out = Map::new();
        for (id, key) in self.account.one_time_keys() {
            let key = key.to_base64();
            let key_id = format!("{ONE_TIME_KEY_ALGORITHM}:{}", id.to_base64());
            out.insert(key_id.clone(), sign(&self.account, &self.session, json!({ "key": key })));
            self.unclaimed.insert(key_id, key);
        }
        self.account.mark_keys_as_published();
        Value::Object(out)
    }
}

/// `object` with its `signatures` made by the device's ed25519 key over the
/// canonical JSON of the object without `signatures` and `unsigned`.
fn sign(account: &Account, session: &Session, mut object: Value) -> Value {
    let map = object.as_object_mut().expect("only objects are signed");
    map.remove("signatures");
    let unsigned = map.remove("unsigned");
    let signature = account.sign(canonical_json(&object)).to_base64();
    object["signatures"] = json!({ &session.user_id: { format!("ed25519:{}", session.device_id): signature } });
    if let Some(u) = unsigned {
        object["unsigned"] = u;
    }
    object
}

/// Matrix canonical JSON: object keys sorted by code point, no whitespace.
/// Sorted here rather than trusting `serde_json::Map` to be a `BTreeMap`,
/// which any crate in the build could change with `preserve_order`.
fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Incompressible filler for ciphertexts (splitmix64): the server stores
/// and forwards it, so it must not be a repeated pattern it could share.
struct Filler(u64);

impl Filler {
    fn new() -> Self {
        static SEED: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        Filler(now ^ SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    fn base64(&mut self, len_bytes: usize) -> String {
        let mut bytes = Vec::with_capacity(len_bytes + 8);
        while bytes.len() < len_bytes {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        bytes.truncate(len_bytes);
        vodozemac::base64_encode(bytes)
    }
}

/// Uploads `bodies` (setup: not timed) and checks that each device then
/// holds exactly the one-time keys it has not had claimed.
async fn upload(ctx: &Ctx, bodies: Vec<(Session, Value, usize)>) -> Result<()> {
    let server = ctx.server.clone();
    bounded(bodies, ctx.sizes.setup_concurrency, move |(s, body, unclaimed)| {
        let server = server.clone();
        async move {
            let v = server.keys_upload(&s, &body).await.with_context(|| format!("/keys/upload of {}", s.user_id))?;
            let count = v["one_time_key_counts"][ONE_TIME_KEY_ALGORITHM].as_u64().unwrap_or(0);
            if count != unclaimed as u64 {
                bail!(
                    "{}: /keys/upload counts {count} unclaimed one-time keys, the device uploaded {unclaimed} not yet claimed",
                    s.user_id
                );
            }
            Ok(())
        }
    })
    .await
    .map(|_| ())
}

/// The answers of one share, kept for checking after the timing.
struct Share {
    queries: Vec<Value>,
    claim: Value,
    query_ms: f64,
    claim_ms: f64,
    send_ms: f64,
    total_ms: f64,
}

/// One timed share: query, claim, send. `messages` are prepared beforehand
/// (what the client encrypts is not the server's work).
async fn share(
    server: &Server,
    sender: &Session,
    user_chunks: &[Vec<String>],
    claim_devices: &[(String, String)],
    messages: Vec<Value>,
) -> Result<Share> {
    let t0 = Instant::now();
    let (srv, s) = (server.clone(), sender.clone());
    let queries = bounded(user_chunks.to_vec(), MAX_CONCURRENT_QUERIES, move |users| {
        let (srv, s) = (srv.clone(), s.clone());
        async move { srv.keys_query(&s, &users).await.context("/keys/query") }
    })
    .await?;
    let t1 = Instant::now();
    let claim = server.keys_claim(sender, claim_devices, ONE_TIME_KEY_ALGORITHM).await.context("/keys/claim")?;
    let t2 = Instant::now();
    for m in &messages {
        server.send_to_device(sender, ENCRYPTED, m).await.context("/sendToDevice")?;
    }
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    Ok(Share { queries, claim, query_ms: ms(t0, t1), claim_ms: ms(t1, t2), send_ms: ms(t2, t3), total_ms: ms(t0, t3) })
}

/// Every device's keys are in the `/keys/query` answers, as uploaded.
fn check_query(queries: &[Value], devices: &[Device]) -> Result<()> {
    for q in queries {
        if let Some(f) = q["failures"].as_object().filter(|f| !f.is_empty()) {
            bail!("/keys/query reported failures: {}", Value::Object(f.clone()));
        }
    }
    for d in devices {
        let (user, device) = (&d.session.user_id, &d.session.device_id);
        let got = queries
            .iter()
            .find_map(|q| q["device_keys"][user].get(device))
            .ok_or_else(|| anyhow!("/keys/query returned no keys for device {device} of {user}"))?;
        if got["user_id"] != *user || got["device_id"] != *device {
            bail!("/keys/query: keys of {user}/{device} name {}/{}", got["user_id"], got["device_id"]);
        }
        if got["keys"] != d.keys || got["signatures"][user] != d.signatures[user] {
            bail!("/keys/query: keys of {user}/{device} differ from those uploaded: {got}");
        }
    }
    Ok(())
}

/// The claim gave every member device one of its uploaded one-time keys
/// that no earlier claim gave; those are no longer unclaimed.
fn check_claim(claim: &Value, members: &mut [Device]) -> Result<()> {
    if let Some(f) = claim["failures"].as_object().filter(|f| !f.is_empty()) {
        bail!("/keys/claim reported failures: {}", Value::Object(f.clone()));
    }
    for d in members {
        let (user, device) = (&d.session.user_id, &d.session.device_id);
        let keys = claim["one_time_keys"][user][device]
            .as_object()
            .filter(|k| k.len() == 1)
            .ok_or_else(|| anyhow!("/keys/claim did not return exactly one key for {user}/{device}"))?;
        let (key_id, key) = keys.iter().next().expect("one key");
        let Some(uploaded) = d.unclaimed.remove(key_id) else {
            bail!("/keys/claim returned {key_id} for {user}/{device}: not uploaded, or claimed before");
        };
        if key["key"] != uploaded.as_str() {
            bail!("/keys/claim returned {key_id} of {user}/{device} with another key than uploaded");
        }
    }
    Ok(())
}

/// The recipient's `/sync` (`to_device.events`) holds every message sent
/// to it, each from the sender, with the sender's key and the recipient's
/// ciphertext; nothing else and nothing twice.
async fn check_inbox(
    server: Server,
    recipient: Session,
    sender: (String, String),
    curve25519: String,
    sent: Vec<String>,
) -> Result<()> {
    let (sender_user, sender_key) = sender;
    let who = &recipient.user_id;
    let mut missing: HashSet<String> = sent.iter().cloned().collect();
    let mut since: Option<String> = None;
    // A server hands out at least a few to-device messages per sync; 10
    // per sync bounds the loop without leaning on any server's batch size.
    for _ in 0..sent.len() / 10 + 3 {
        let (v, _) = server.sync(&recipient, since.as_deref(), 0, &inbox_filter()).await?;
        let events = v["to_device"]["events"].as_array().cloned().unwrap_or_default();
        for ev in &events {
            let content = &ev["content"];
            if ev["type"] != ENCRYPTED || ev["sender"] != *sender_user.as_str() {
                bail!("{who}: unexpected to-device event {} from {}", ev["type"], ev["sender"]);
            }
            if content["algorithm"] != OLM_ALGORITHM || content["sender_key"] != *sender_key.as_str() {
                bail!(
                    "{who}: to-device message with algorithm {} and sender_key {}",
                    content["algorithm"],
                    content["sender_key"]
                );
            }
            let body = content["ciphertext"][&curve25519]["body"].as_str().unwrap_or_default();
            if !missing.remove(body) {
                let what = if sent.iter().any(|s| s == body) { "twice" } else { "that was not sent to it" };
                bail!("{who}: /sync delivered a message {what}");
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if events.is_empty() && since.is_some() {
            break;
        }
        since = Some(v["next_batch"].as_str().ok_or_else(|| anyhow!("sync without next_batch"))?.to_owned());
    }
    bail!("{who}: {} of {} messages from the sender never came in /sync to_device", missing.len(), sent.len())
}

/// A sync filter that leaves rooms, presence and account data out (only
/// `to_device` matters here) and differs per call, so no server answers
/// it from a response cache.
fn inbox_filter() -> String {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    format!(
        r#"{{"room":{{"rooms":[]}},"presence":{{"not_types":["*"]}},"account_data":{{"not_types":["*","chancery.bench.nonce.{n}"]}}}}"#
    )
}

pub async fn run(ctx: &Ctx, o: &mut Outcome) -> Result<()> {
    let s = &ctx.sizes;
    let (n, rounds, batch) = (s.key_share_members.max(1), s.key_share_rounds, s.key_share_batch.max(1));
    o.param("members", n);
    o.param("rounds", rounds);
    o.param("batch", batch);
    o.param("ciphertext_bytes", CIPHERTEXT_BYTES);
    if rounds < MIN_SAMPLES {
        bail!("a median needs at least {MIN_SAMPLES} rounds, --key-share-rounds is {rounds}");
    }

    // Setup: an encrypted room of the sender and N members.
    let users = ctx.pool_users(n + 1).await?;
    let sender = users[0].clone();
    let encryption = json!({ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": MEGOLM_ALGORITHM } });
    let room = ctx.server.create_room_with_state(&sender, "bench key share", s.room_version.as_deref(), &[encryption]).await?;
    let (server, r) = (ctx.server.clone(), room.clone());
    bounded(users[1..].to_vec(), s.setup_concurrency, move |u| {
        let (server, r) = (server.clone(), r.clone());
        async move { server.join(&u, &r).await }
    })
    .await?;
    let joined = ctx.server.joined_members_count(&sender, &room).await?;
    if joined != n + 1 {
        bail!("room has {joined} joined members after setup, expected {}", n + 1);
    }

    // Setup: device keys for all, one-time keys for the members. Round 0
    // (the first share, reported apart) takes one key too.
    let mut own = Device::new(sender.clone());
    let body = json!({ "device_keys": own.device_keys() });
    let mut members: Vec<Device> = users[1..].iter().cloned().map(Device::new).collect();
    let per_upload = own.account.max_number_of_one_time_keys();
    let mut bodies = vec![(sender.clone(), body, 0)];
    for d in &mut members {
        let body = json!({ "device_keys": d.device_keys(), "one_time_keys": d.one_time_keys((rounds + 1).min(per_upload)) });
        bodies.push((d.session.clone(), body, d.unclaimed.len()));
    }
    upload(ctx, bodies).await?;

    let user_ids: Vec<String> = users.iter().map(|u| u.user_id.clone()).collect();
    let user_chunks: Vec<Vec<String>> = user_ids.chunks(batch).map(<[String]>::to_vec).collect();
    let claim_devices: Vec<(String, String)> =
        members.iter().map(|d| (d.session.user_id.clone(), d.session.device_id.clone())).collect();
    let sampled: Vec<usize> = (0..SYNC_SAMPLE.min(n)).map(|i| i * n / SYNC_SAMPLE.min(n)).collect();
    let mut sent_to_sampled: Vec<Vec<String>> = vec![Vec::new(); sampled.len()];
    let mut filler = Filler::new();

    let (mut total, mut query, mut claim, mut send) = (Samples::new(), Samples::new(), Samples::new(), Samples::new());
    let mut first_ms = f64::NAN;
    ctx.measure_begin();
    for round in 0..=rounds {
        // Devices out of one-time keys get more (not timed; all run out
        // together, as every round claims one of each).
        if members.iter().any(|d| d.unclaimed.is_empty()) {
            let more = (rounds + 1 - round).min(per_upload);
            let bodies = members
                .iter_mut()
                .filter(|d| d.unclaimed.is_empty())
                .map(|d| {
                    let body = json!({ "one_time_keys": d.one_time_keys(more) });
                    (d.session.clone(), body, d.unclaimed.len())
                })
                .collect();
            upload(ctx, bodies).await?;
        }
        let mut bodies = Vec::with_capacity(n);
        let mut messages = Vec::new();
        for chunk in members.chunks(batch) {
            let mut per_user = Map::new();
            for d in chunk {
                let body = filler.base64(CIPHERTEXT_BYTES);
                let content = json!({
                    "algorithm": OLM_ALGORITHM,
                    "sender_key": own.curve25519,
                    "ciphertext": { &d.curve25519: { "type": 0, "body": body } },
                });
                per_user.insert(d.session.user_id.clone(), json!({ &d.session.device_id: content }));
                bodies.push(body);
            }
            messages.push(Value::Object(per_user));
        }

        let done = share(&ctx.server, &sender, &user_chunks, &claim_devices, messages)
            .await
            .with_context(|| format!("round {round}"))?;

        // After the timing: what the server answered.
        check_query(&done.queries, std::slice::from_ref(&own)).with_context(|| format!("round {round}"))?;
        check_query(&done.queries, &members).with_context(|| format!("round {round}"))?;
        check_claim(&done.claim, &mut members).with_context(|| format!("round {round}"))?;
        for (k, &i) in sampled.iter().enumerate() {
            sent_to_sampled[k].push(std::mem::take(&mut bodies[i]));
        }
        if round == 0 {
            first_ms = done.total_ms;
        } else {
            total.push_ms(done.total_ms);
            query.push_ms(done.query_ms);
            claim.push_ms(done.claim_ms);
            send.push_ms(done.send_ms);
        }
    }
    ctx.measure_end("key-share", o).await;

    o.figure("key_share_ms", total.median()?, Better::Lower);
    o.figure("query_ms", query.median()?, Better::Lower);
    o.figure("claim_ms", claim.median()?, Better::Lower);
    o.figure("send_ms", send.median()?, Better::Lower);
    o.figure("key_share_max_ms", total.max(), Better::Lower);
    o.figure("first_key_share_ms", first_ms, Better::Lower);

    // Delivery, read back by a sample of recipients.
    let sender_keys = (sender.user_id.clone(), own.curve25519.clone());
    let checks: Vec<_> = sampled
        .iter()
        .zip(sent_to_sampled)
        .map(|(&i, sent)| (members[i].session.clone(), members[i].curve25519.clone(), sent))
        .collect();
    let server = ctx.server.clone();
    bounded(checks, s.setup_concurrency, move |(recipient, curve25519, sent)| {
        check_inbox(server.clone(), recipient, sender_keys.clone(), curve25519, sent)
    })
    .await?;

    o.verified = format!(
        "each of {} shares: /keys/query returned the uploaded, signed device keys of all {} users, /keys/claim one uploaded and never before claimed signed_curve25519 key for each of the {n} devices; {} sampled recipients' /sync to_device held all {} messages sent to them, from the sender with its sender_key, nothing else",
        rounds + 1,
        n + 1,
        sampled.len(),
        rounds + 1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vodozemac::{Ed25519PublicKey, Ed25519Signature};

    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v = json!({ "b": { "z": 1, "a": [ { "y": "é\n", "x": null } ] }, "a": true, "B": "x" });
        assert_eq!(canonical_json(&v), r#"{"B":"x","a":true,"b":{"a":[{"x":null,"y":"é\n"}],"z":1}}"#);
    }

    #[test]
    fn signatures_verify_over_canonical_json_without_signatures_and_unsigned() {
        let session =
            Session { user_id: "@a:x".into(), localpart: "a".into(), access_token: "t".into(), device_id: "DEV".into() };
        let mut d = Device::new(session);
        let keys = d.device_keys();
        let otks = d.one_time_keys(3);
        assert_eq!(otks.as_object().unwrap().len(), 3);
        assert_eq!(d.unclaimed.len(), 3);
        let ed = Ed25519PublicKey::from_base64(keys["keys"]["ed25519:DEV"].as_str().unwrap()).unwrap();
        let verify = |signed: &Value| {
            let sig = Ed25519Signature::from_base64(signed["signatures"]["@a:x"]["ed25519:DEV"].as_str().unwrap()).unwrap();
            let mut bare = signed.clone();
            bare.as_object_mut().unwrap().remove("signatures");
            bare.as_object_mut().unwrap().remove("unsigned");
            ed.verify(canonical_json(&bare).as_bytes(), &sig)
        };
        verify(&keys).unwrap();
        for (id, otk) in otks.as_object().unwrap() {
            assert!(id.starts_with("signed_curve25519:"));
            verify(otk).unwrap();
        }
        // Something added under `unsigned` does not break the signature.
        let mut with_unsigned = keys.clone();
        with_unsigned["unsigned"] = json!({ "device_display_name": "x" });
        verify(&with_unsigned).unwrap();
        with_unsigned["algorithms"] = json!([]);
        assert!(verify(&with_unsigned).is_err());
    }

    fn device(user: &str) -> Device {
        let session = Session { user_id: user.into(), localpart: "a".into(), access_token: "t".into(), device_id: "DEV".into() };
        let mut d = Device::new(session);
        d.device_keys();
        d
    }

    #[test]
    fn query_answers_must_hold_every_device_as_uploaded() {
        let (a, b) = (device("@a:x"), device("@b:x"));
        let answer = |d: &Device| json!({ "user_id": d.session.user_id, "device_id": "DEV", "keys": d.keys, "signatures": d.signatures, "unsigned": {} });
        let chunks = vec![
            json!({ "device_keys": { "@a:x": { "DEV": answer(&a) } } }),
            json!({ "device_keys": { "@b:x": { "DEV": answer(&b) } } }),
        ];
        check_query(&chunks, &[a, b]).unwrap();

        let (a, b) = (device("@a:x"), device("@b:x"));
        let err = check_query(&[json!({ "device_keys": { "@a:x": { "DEV": answer(&a) } } })], &[a, b]).unwrap_err();
        assert!(err.to_string().contains("no keys for device DEV of @b:x"), "{err}");
        let (a, other) = (device("@a:x"), device("@a:x"));
        let err = check_query(&[json!({ "device_keys": { "@a:x": { "DEV": answer(&other) } } })], &[a]).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
    }

    #[test]
    fn claims_must_give_each_device_a_fresh_uploaded_key() {
        let mut devices = vec![device("@a:x")];
        let otks = devices[0].one_time_keys(2);
        let (id, otk) = otks.as_object().unwrap().iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
        let claim = json!({ "one_time_keys": { "@a:x": { "DEV": { &id: otk } } } });
        check_claim(&claim, &mut devices).unwrap();
        assert_eq!(devices[0].unclaimed.len(), 1);
        let err = check_claim(&claim, &mut devices).unwrap_err();
        assert!(err.to_string().contains("claimed before"), "{err}");
        let err = check_claim(&json!({ "one_time_keys": {} }), &mut devices).unwrap_err();
        assert!(err.to_string().contains("exactly one key"), "{err}");
        let (id, _) = devices[0].unclaimed.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
        let forged = json!({ "one_time_keys": { "@a:x": { "DEV": { &id: { "key": "AAAA" } } } } });
        assert!(check_claim(&forged, &mut devices).unwrap_err().to_string().contains("another key"));
    }

    #[test]
    fn filler_is_base64_of_the_asked_length_and_differs() {
        let mut f = Filler::new();
        let (a, b) = (f.base64(CIPHERTEXT_BYTES), f.base64(CIPHERTEXT_BYTES));
        assert_eq!(a.len(), 1024);
        assert_ne!(a, b);
        assert_eq!(vodozemac::base64_decode(&a).unwrap().len(), CIPHERTEXT_BYTES);
    }
}
