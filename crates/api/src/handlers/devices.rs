//! `/devices` and `/delete_devices`.

use std::sync::Arc;

use axum::extract::State;
use chancery_proto::ruma::OwnedDeviceId;
use chancery_proto::ruma::api::client::device::{
    self as ruma_device, delete_device, delete_devices, get_device, get_devices, update_device,
};
use chancery_service::Accounts;
use chancery_service::Device;

use super::auth_payload;
use crate::error::ApiResult;
use crate::extract::{Authed, Ruma, RumaResponse};

fn to_ruma(device: Device) -> ruma_device::Device {
    let mut d = ruma_device::Device::new(OwnedDeviceId::from(device.device_id));
    d.display_name = device.display_name;
    d
}

pub async fn list(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(_): Ruma<get_devices::v3::Request>,
) -> ApiResult<RumaResponse<get_devices::v3::Response>> {
    let devices = accounts.devices(&user).await?;
    Ok(RumaResponse(get_devices::v3::Response::new(devices.into_iter().map(to_ruma).collect())))
}

pub async fn get(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<get_device::v3::Request>,
) -> ApiResult<RumaResponse<get_device::v3::Response>> {
    let device = accounts.device(&user, req.device_id.as_str()).await?;
    Ok(RumaResponse(get_device::v3::Response::new(to_ruma(device))))
}

pub async fn update(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<update_device::v3::Request>,
) -> ApiResult<RumaResponse<update_device::v3::Response>> {
    accounts.rename_device(&user, req.device_id.as_str(), req.display_name.as_deref()).await?;
    Ok(RumaResponse(update_device::v3::Response::new()))
}

pub async fn delete_one(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_device::v3::Request>,
) -> ApiResult<RumaResponse<delete_device::v3::Response>> {
    // Spec: 404 for a device that does not exist, before asking for auth.
    accounts.device(&user, req.device_id.as_str()).await?;
    accounts.delete_devices(&user, &[req.device_id.to_string()], auth_payload(req.auth)).await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

pub async fn delete_many(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<delete_devices::v3::Request>,
) -> ApiResult<RumaResponse<delete_devices::v3::Response>> {
    let ids: Vec<String> = req.devices.iter().map(|d| d.to_string()).collect();
    accounts.delete_devices(&user, &ids, auth_payload(req.auth)).await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}
