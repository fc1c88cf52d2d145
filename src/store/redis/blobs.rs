//! Opaque values with a TTL under `{prefix}:blob:{name}` (the response
//! cache). Plain GET and SET: one key each, so any cluster node serves it.

use super::connection::store_error;
use super::RedisStore;
use crate::store::{Blobs, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::KeysInterface;
use fred::types::Expiration;
use std::time::Duration;

impl RedisStore {
    fn blob_key(&self, name: &str) -> String {
        format!("{}:blob:{name}", self.ctx.keys.prefix)
    }
}

#[async_trait]
impl Blobs for RedisStore {
    async fn get_blob(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let conn = self.ready().await?;
        conn.link
            .client
            .get::<Option<Bytes>, _>(self.blob_key(name))
            .await
            .map_err(store_error)
    }

    fn put_blob(&self, name: &str, value: Bytes, ttl: Duration) {
        let Ok(conn) = self.conn() else { return };
        let client = conn.link.client.clone();
        let key = self.blob_key(name);
        let px = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        // On the store's own IO runtime: the request that produced the value
        // is not kept waiting.
        conn.rt.spawn(async move {
            let set = client
                .set::<(), _, _>(key, value, Some(Expiration::PX(px)), None, false)
                .await;
            if let Err(e) = set {
                log::warn!("response cache write to redis failed: {e}");
            }
        });
    }
}
