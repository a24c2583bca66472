//! Registration, whoami, password changes and deactivation.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use chancery_proto::ruma::OwnedDeviceId;
use chancery_proto::ruma::api::client::account::ThirdPartyIdRemovalStatus;
use chancery_proto::ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_username_availability, register, whoami,
};
use chancery_service::Accounts;
use chancery_service::RegisterRequest;

use super::auth_payload;
use crate::error::ApiResult;
use crate::extract::{Authed, ClientAddress, Ruma, RumaResponse};

pub async fn register(
    State(accounts): State<Arc<Accounts>>,
    ClientAddress(address): ClientAddress,
    Ruma(req): Ruma<register::v3::Request>,
) -> ApiResult<RumaResponse<register::v3::Response>> {
    let outcome = accounts
        .register(RegisterRequest {
            username: req.username,
            password: req.password,
            device_id: req.device_id.map(|d| d.to_string()),
            initial_device_display_name: req.initial_device_display_name,
            inhibit_login: req.inhibit_login,
            refresh_token: req.refresh_token,
            guest: req.kind == register::RegistrationKind::Guest,
            auth: auth_payload(req.auth),
            client_address: address,
        })
        .await?;
    let mut response = register::v3::Response::new(outcome.user_id);
    if let Some(session) = outcome.session {
        response.access_token = Some(session.access_token);
        response.device_id = Some(OwnedDeviceId::from(session.device_id));
        response.refresh_token = session.refresh_token;
        response.expires_in = session.expires_in_ms.map(Duration::from_millis);
    }
    Ok(RumaResponse(response))
}

pub async fn username_available(
    State(accounts): State<Arc<Accounts>>,
    ClientAddress(address): ClientAddress,
    Ruma(req): Ruma<get_username_availability::v3::Request>,
) -> ApiResult<RumaResponse<get_username_availability::v3::Response>> {
    accounts.username_available(&req.username, address.as_deref()).await?;
    Ok(RumaResponse(get_username_availability::v3::Response::new(true)))
}

pub async fn registration_token_validity(
    State(accounts): State<Arc<Accounts>>,
    ClientAddress(address): ClientAddress,
    Ruma(req): Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<RumaResponse<check_registration_token_validity::v1::Response>> {
    let valid = accounts.registration_token_valid(&req.token, address.as_deref()).await?;
    Ok(RumaResponse(check_registration_token_validity::v1::Response::new(valid)))
}

pub async fn whoami(Authed(user): Authed, Ruma(_): Ruma<whoami::v3::Request>) -> RumaResponse<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(user.user_id, false);
    response.device_id = Some(OwnedDeviceId::from(user.device_id));
    RumaResponse(response)
}

pub async fn change_password(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<change_password::v3::Request>,
) -> ApiResult<RumaResponse<change_password::v3::Response>> {
    accounts.change_password(&user, req.new_password, req.logout_devices, auth_payload(req.auth)).await?;
    Ok(RumaResponse(change_password::v3::Response::new()))
}

pub async fn deactivate(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(req): Ruma<deactivate::v3::Request>,
) -> ApiResult<RumaResponse<deactivate::v3::Response>> {
    accounts.deactivate(&user, auth_payload(req.auth)).await?;
    // No identity server bindings are kept, so none to remove.
    Ok(RumaResponse(deactivate::v3::Response::new(ThirdPartyIdRemovalStatus::NoSupport)))
}
