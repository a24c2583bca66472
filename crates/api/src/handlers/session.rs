//! Login, token refresh and logout.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use chancery_proto::ruma::OwnedDeviceId;
use chancery_proto::ruma::api::client::session::{get_login_types, login, logout, logout_all, refresh_token};
use chancery_service::Accounts;
use chancery_service::{Error, LoginRequest};

use crate::error::ApiResult;
use crate::extract::{Authed, ClientAddress, Ruma, RumaResponse};

pub async fn login_types(Ruma(_): Ruma<get_login_types::v3::Request>) -> RumaResponse<get_login_types::v3::Response> {
    let password = get_login_types::v3::LoginType::Password(get_login_types::v3::PasswordLoginType::new());
    RumaResponse(get_login_types::v3::Response::new(vec![password]))
}

pub async fn login(
    State(accounts): State<Arc<Accounts>>,
    ClientAddress(address): ClientAddress,
    Ruma(req): Ruma<login::v3::Request>,
) -> ApiResult<RumaResponse<login::v3::Response>> {
    let login::v3::LoginInfo::Password(info) = req.login_info else {
        return Err(Error::Unknown("only m.login.password is supported".into()).into());
    };
    // `user` is deprecated since r0.4 but older clients and scripts send it.
    #[allow(deprecated)]
    let user = match (&info.identifier, &info.user) {
        (Some(identifier), _) => {
            super::identifier_user(identifier).ok_or_else(|| Error::Unknown("only m.id.user identifiers are supported".into()))?
        }
        (None, Some(user)) => user.clone(),
        (None, None) => return Err(Error::MissingParam("an identifier is required".into()).into()),
    };
    let outcome = accounts
        .login(LoginRequest {
            user,
            password: info.password,
            device_id: req.device_id.map(|d| d.to_string()),
            initial_device_display_name: req.initial_device_display_name,
            refresh_token: req.refresh_token,
            client_address: address,
        })
        .await?;
    let mut response = login::v3::Response::new(outcome.user_id, outcome.access_token, OwnedDeviceId::from(outcome.device_id));
    response.refresh_token = outcome.refresh_token;
    response.expires_in = outcome.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(response))
}

pub async fn refresh(
    State(accounts): State<Arc<Accounts>>,
    Ruma(req): Ruma<refresh_token::v3::Request>,
) -> ApiResult<RumaResponse<refresh_token::v3::Response>> {
    let outcome = accounts.refresh(&req.refresh_token).await?;
    let mut response = refresh_token::v3::Response::new(outcome.access_token);
    response.refresh_token = outcome.refresh_token;
    response.expires_in_ms = outcome.expires_in_ms.map(Duration::from_millis);
    Ok(RumaResponse(response))
}

pub async fn logout(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(_): Ruma<logout::v3::Request>,
) -> ApiResult<RumaResponse<logout::v3::Response>> {
    accounts.logout(&user).await?;
    Ok(RumaResponse(logout::v3::Response::new()))
}

pub async fn logout_all(
    State(accounts): State<Arc<Accounts>>,
    Authed(user): Authed,
    Ruma(_): Ruma<logout_all::v3::Request>,
) -> ApiResult<RumaResponse<logout_all::v3::Response>> {
    accounts.logout_all(&user).await?;
    Ok(RumaResponse(logout_all::v3::Response::new()))
}
