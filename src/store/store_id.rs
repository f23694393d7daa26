//! The store's own id (META `store_id`): a UUID made the first time it is asked for and kept
//! in the file, so that whatever must tell this store apart from others (its RabbitMQ reply
//! queue) keeps the same name across restarts.

use super::tables::{META, META_STORE_ID};
use super::{Store, StoreError};
use crate::task::TaskId;

impl Store {
    /// The store's id, made and committed (one small durable write, once per file) when the
    /// file has none yet.
    pub(crate) fn store_id(&self) -> Result<String, StoreError> {
        if let Some(id) = self.read_store_id()? {
            return Ok(id);
        }
        let made = TaskId::new().to_string();
        self.write(|tables| {
            if let Some(existing) = tables.get_meta(META_STORE_ID)? {
                return Ok(existing);
            }
            tables.set_meta(META_STORE_ID, made.as_bytes())?;
            Ok(made.clone())
        })
    }

    fn read_store_id(&self) -> Result<Option<String>, StoreError> {
        let err = self.storage("reading the store's id");
        let txn = self.begin_read("reading the store's id")?;
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let value = meta.get(META_STORE_ID).map_err(|e| err(e.into()))?;
        Ok(value.and_then(|v| std::str::from_utf8(v.value()).ok().map(str::to_owned)))
    }
}
