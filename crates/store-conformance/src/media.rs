//! `MediaStore`: media ids, their content's metadata, thumbnails,
//! quarantine, quotas and which files rows still reference.

use chancery_store::*;

fn upload(media_id: &str, uploader: Option<&str>, size_bytes: u64, sha256: &str) -> NewMedia {
    NewMedia {
        media_id: media_id.into(),
        uploader: uploader.map(str::to_owned),
        content_type: Some("image/png".into()),
        file_name: Some("cat.png".into()),
        size_bytes,
        sha256: sha256.into(),
        uploaded_ts: 5_000,
    }
}

fn pending(media_id: &str, uploader: &str, expires_ts: u64) -> PendingMedia {
    PendingMedia { media_id: media_id.into(), uploader: uploader.into(), created_ts: 1_000, expires_ts }
}

fn thumb(width: u32, method: ThumbnailMethod, sha256: &str) -> StoredThumbnail {
    StoredThumbnail {
        key: ThumbnailKey { width, height: width, method },
        content_type: "image/png".into(),
        size_bytes: 10,
        sha256: sha256.into(),
    }
}

pub async fn media_is_stored_once_and_counted_against_the_quota(store: DynStore) {
    let alice = Some("@alice:x");
    store.store_media(upload("a1", alice, 40, "h1"), 100).await.unwrap();
    let record = store.media("a1").await.unwrap().unwrap();
    assert_eq!(record.uploader.as_deref(), alice);
    assert!(!record.quarantined);
    assert_eq!(record.unused_expires_ts, None);
    let content = record.content.unwrap();
    assert_eq!(
        (content.content_type.as_deref(), content.file_name.as_deref(), content.size_bytes, content.sha256.as_str()),
        (Some("image/png"), Some("cat.png"), 40, "h1")
    );
    assert_eq!(content.uploaded_ts, 5_000);
    assert!(store.media("nope").await.unwrap().is_none());

    // An id is used once, and a refused write adds nothing to the usage.
    assert!(matches!(store.store_media(upload("a1", alice, 1, "h9"), 100).await, Err(StoreError::MediaIdTaken)));
    assert_eq!(store.media_usage_bytes("@alice:x").await.unwrap(), 40);
    store.store_media(upload("a2", alice, 60, "h1"), 100).await.unwrap();
    assert_eq!(store.media_usage_bytes("@alice:x").await.unwrap(), 100);
    assert!(matches!(store.store_media(upload("a3", alice, 1, "h2"), 100).await, Err(StoreError::MediaQuotaExceeded)));
    assert!(store.media("a3").await.unwrap().is_none());
    // Other users and the server's own media have their own accounts.
    store.store_media(upload("b1", Some("@bob:x"), 100, "h2"), 100).await.unwrap();
    store.store_media(upload("s1", None, 1_000, "h3"), 100).await.unwrap();
    assert_eq!(store.media("s1").await.unwrap().unwrap().uploader, None);

    // Deleting gives the bytes back.
    assert!(store.delete_media("a2").await.unwrap().is_some());
    assert_eq!(store.media_usage_bytes("@alice:x").await.unwrap(), 40);
    store.store_media(upload("a3", alice, 60, "h2"), 100).await.unwrap();
    assert!(store.delete_media("a2").await.unwrap().is_none(), "deleted once");
}

pub async fn concurrent_uploads_hold_the_quota(store: DynStore) {
    let uploads: Vec<_> = (0..12)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.store_media(upload(&format!("m{n}"), Some("@alice:x"), 10, "h"), 50).await })
        })
        .collect();
    let mut stored = 0;
    for upload in uploads {
        match upload.await.unwrap() {
            Ok(()) => stored += 1,
            Err(StoreError::MediaQuotaExceeded) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 5);
    assert_eq!(store.media_usage_bytes("@alice:x").await.unwrap(), 50);
}

pub async fn pending_media_is_bounded_expires_and_completes_once(store: DynStore) {
    let now = 2_000;
    store.create_pending_media(pending("p1", "@alice:x", 10_000), now, 2).await.unwrap();
    store.create_pending_media(pending("p2", "@alice:x", 3_000), now, 2).await.unwrap();
    assert!(matches!(
        store.create_pending_media(pending("p3", "@alice:x", 10_000), now, 2).await,
        Err(StoreError::TooManyPendingMedia)
    ));
    // Bob has his own bound; an id is used once.
    store.create_pending_media(pending("p3", "@bob:x", 10_000), now, 2).await.unwrap();
    assert!(matches!(store.create_pending_media(pending("p3", "@alice:x", 10_000), now, 3).await, Err(StoreError::MediaIdTaken)));
    let record = store.media("p1").await.unwrap().unwrap();
    assert_eq!((record.content, record.unused_expires_ts, record.created_ts), (None, Some(10_000), 1_000));

    // Once p2 expired, its place is free again.
    store.create_pending_media(pending("p4", "@alice:x", 10_000), 3_000, 2).await.unwrap();
    assert!(store.media("p2").await.unwrap().is_none());

    // Content comes once, from the creator, before the expiry.
    let content = |id: &str, user: &str| upload(id, Some(user), 7, "h1");
    assert!(matches!(store.complete_pending_media(content("p1", "@bob:x"), now, 100).await, Err(StoreError::NotMediaCreator)));
    assert!(matches!(store.complete_pending_media(content("zz", "@alice:x"), now, 100).await, Err(StoreError::UnknownMedia)));
    assert!(matches!(store.complete_pending_media(content("p1", "@alice:x"), now, 6).await, Err(StoreError::MediaQuotaExceeded)));
    store.complete_pending_media(content("p1", "@alice:x"), now, 100).await.unwrap();
    let record = store.media("p1").await.unwrap().unwrap();
    assert_eq!(record.unused_expires_ts, None);
    assert_eq!(record.content.unwrap().size_bytes, 7);
    assert_eq!(store.media_usage_bytes("@alice:x").await.unwrap(), 7);
    assert!(matches!(
        store.complete_pending_media(content("p1", "@alice:x"), now, 100).await,
        Err(StoreError::MediaAlreadyUploaded)
    ));
    // Direct uploads cannot take a pending id either.
    assert!(matches!(store.store_media(content("p4", "@alice:x"), 100).await, Err(StoreError::MediaIdTaken)));
    assert!(matches!(store.complete_pending_media(content("p4", "@alice:x"), 10_000, 100).await, Err(StoreError::UnknownMedia)));

    // The sweep forgets expired ids only; uploaded ones stay.
    assert_eq!(store.delete_expired_pending_media(10_000).await.unwrap(), 2);
    assert!(store.media("p4").await.unwrap().is_none());
    assert!(store.media("p3").await.unwrap().is_none());
    assert!(store.media("p1").await.unwrap().is_some());
}

pub async fn thumbnails_and_deletions_tell_which_files_are_unreferenced(store: DynStore) {
    store.store_media(upload("a", Some("@alice:x"), 5, "shared"), 100).await.unwrap();
    store.store_media(upload("b", Some("@bob:x"), 5, "shared"), 100).await.unwrap();
    let key = ThumbnailKey { width: 32, height: 32, method: ThumbnailMethod::Crop };
    assert!(store.thumbnail("a", key).await.unwrap().is_none());
    let stored = store.store_thumbnail("a", thumb(32, ThumbnailMethod::Crop, "t32")).await.unwrap();
    assert_eq!(stored, thumb(32, ThumbnailMethod::Crop, "t32"));
    // The first thumbnail of a key wins.
    let again = store.store_thumbnail("a", thumb(32, ThumbnailMethod::Crop, "other")).await.unwrap();
    assert_eq!(again.sha256, "t32");
    assert_eq!(store.thumbnail("a", key).await.unwrap(), Some(stored));
    store.store_thumbnail("a", thumb(32, ThumbnailMethod::Scale, "t32s")).await.unwrap();
    store.store_thumbnail("b", thumb(32, ThumbnailMethod::Crop, "t32")).await.unwrap();
    assert!(store.thumbnail("b", ThumbnailKey { method: ThumbnailMethod::Scale, ..key }).await.unwrap().is_none());

    let all = ["shared", "t32", "t32s", "other", "never"].map(String::from);
    let mut free = store.unreferenced_media_hashes(&all).await.unwrap();
    free.sort();
    assert_eq!(free, ["never", "other"]);

    // Deleting `a` frees only what nothing else uses.
    let deleted = store.delete_media("a").await.unwrap().unwrap();
    assert_eq!(deleted.unreferenced, ["t32s"]);
    assert!(store.thumbnail("a", key).await.unwrap().is_none());
    assert!(matches!(store.store_thumbnail("a", thumb(96, ThumbnailMethod::Crop, "t96")).await, Err(StoreError::UnknownMedia)));
    let mut deleted = store.delete_media("b").await.unwrap().unwrap().unreferenced;
    deleted.sort();
    assert_eq!(deleted, ["shared", "t32"]);

    // A pending id has no thumbnails.
    store.create_pending_media(pending("p", "@alice:x", 10_000), 1, 5).await.unwrap();
    assert!(matches!(store.store_thumbnail("p", thumb(32, ThumbnailMethod::Crop, "t")).await, Err(StoreError::UnknownMedia)));
    assert_eq!(store.delete_media("p").await.unwrap(), Some(DeletedMedia::default()));
}

pub async fn quarantine_is_set_per_item_and_per_uploader(store: DynStore) {
    for (id, user) in [("a1", "@alice:x"), ("a2", "@alice:x"), ("b1", "@bob:x")] {
        store.store_media(upload(id, Some(user), 1, id), 100).await.unwrap();
    }
    assert!(store.set_media_quarantined("b1", true).await.unwrap());
    assert!(!store.set_media_quarantined("nope", true).await.unwrap());
    assert!(store.media("b1").await.unwrap().unwrap().quarantined);
    assert!(!store.media("a1").await.unwrap().unwrap().quarantined);
    assert_eq!(store.set_user_media_quarantined("@alice:x", true).await.unwrap(), 2);
    assert!(store.media("a1").await.unwrap().unwrap().quarantined && store.media("a2").await.unwrap().unwrap().quarantined);
    assert_eq!(store.set_user_media_quarantined("@carol:x", true).await.unwrap(), 0);
    assert!(store.set_media_quarantined("a1", false).await.unwrap());
    assert!(!store.media("a1").await.unwrap().unwrap().quarantined);
    assert_eq!(store.set_user_media_quarantined("@alice:x", false).await.unwrap(), 2);
    assert!(!store.media("a2").await.unwrap().unwrap().quarantined);
    assert!(store.media("b1").await.unwrap().unwrap().quarantined);
}
