//! A user's devices (client-server API "Device Management") and logging
//! them out: a device and its tokens go together.

use chancery_core::uia::{Operation, stage};
use chancery_proto::limits::MAX_DEVICES_PER_DELETE;
use chancery_store::Device;

use super::{Accounts, AuthPayload, AuthedUser, check_device_fields};
use crate::Error;

impl Accounts {
    /// `POST /logout`: the device and its tokens go.
    pub async fn logout(&self, user: &AuthedUser) -> Result<(), Error> {
        self.deps.store.delete_devices(user.user_id.as_str(), std::slice::from_ref(&user.device_id)).await?;
        self.deps.device_lists.changed(user.user_id.as_str()).await;
        Ok(())
    }

    /// `POST /logout/all`.
    pub async fn logout_all(&self, user: &AuthedUser) -> Result<(), Error> {
        self.deps.store.delete_all_devices(user.user_id.as_str(), None).await?;
        self.deps.device_lists.changed(user.user_id.as_str()).await;
        Ok(())
    }

    pub async fn devices(&self, user: &AuthedUser) -> Result<Vec<Device>, Error> {
        Ok(self.deps.store.devices(user.user_id.as_str()).await?)
    }

    pub async fn device(&self, user: &AuthedUser, device_id: &str) -> Result<Device, Error> {
        self.deps.store.device(user.user_id.as_str(), device_id).await?.ok_or_else(|| Error::NotFound("no such device".into()))
    }

    /// `PUT /devices/{deviceId}`.
    pub async fn rename_device(&self, user: &AuthedUser, device_id: &str, name: Option<&str>) -> Result<(), Error> {
        check_device_fields(None, name)?;
        if self.deps.store.set_device_display_name(user.user_id.as_str(), device_id, name).await? {
            Ok(())
        } else {
            Err(Error::NotFound("no such device".into()))
        }
    }

    /// `POST /delete_devices` and `DELETE /devices/{deviceId}` (interactive
    /// auth with the account password).
    pub async fn delete_devices(&self, user: &AuthedUser, device_ids: &[String], auth: Option<AuthPayload>) -> Result<(), Error> {
        if device_ids.len() > MAX_DEVICES_PER_DELETE {
            return Err(Error::InvalidParam(format!("at most {MAX_DEVICES_PER_DELETE} devices per request")));
        }
        let flows = vec![vec![stage::PASSWORD]];
        let session = self.deps.uia.authorize(Operation::DeleteDevices, Some(user.user_id.as_str()), flows, auth).await?;
        self.deps.store.delete_devices(user.user_id.as_str(), device_ids).await?;
        self.deps.uia.finish(&session).await;
        self.deps.device_lists.changed(user.user_id.as_str()).await;
        Ok(())
    }
}
