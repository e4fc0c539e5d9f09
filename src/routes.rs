//! Which requests the gateway answers itself. Pure: method and path in, decision out.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Register,
    Token,
    Me,
    UpdateMe,
}

impl Endpoint {
    /// Whether the handler reads a request body.
    pub fn reads_body(self) -> bool {
        matches!(
            self,
            Endpoint::Register | Endpoint::Token | Endpoint::UpdateMe
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Ready => "ready",
            Endpoint::Register => "register",
            Endpoint::Token => "token",
            Endpoint::Me => "users_me",
            Endpoint::UpdateMe => "update_users_me",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Own(Endpoint),
    /// One of our paths with another method: 405 with this `Allow`.
    MethodNotAllowed(&'static str),
    NotFound,
}

pub fn classify(method: &Method, path: &str) -> Route {
    // HEAD is answered like GET, without the body (as Starlette does).
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/health" if get => Route::Own(Endpoint::Health),
        "/health" => Route::MethodNotAllowed("GET"),
        "/ready" if get => Route::Own(Endpoint::Ready),
        "/ready" => Route::MethodNotAllowed("GET"),
        "/auth/register" if method == Method::POST => Route::Own(Endpoint::Register),
        "/auth/register" => Route::MethodNotAllowed("POST"),
        "/auth/token" if method == Method::POST => Route::Own(Endpoint::Token),
        "/auth/token" => Route::MethodNotAllowed("POST"),
        "/auth/users/me" if get => Route::Own(Endpoint::Me),
        "/auth/users/me" if method == Method::PATCH => Route::Own(Endpoint::UpdateMe),
        "/auth/users/me" => Route::MethodNotAllowed("GET, PATCH"),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_paths_and_methods() {
        assert_eq!(
            classify(&Method::GET, "/health"),
            Route::Own(Endpoint::Health)
        );
        assert_eq!(
            classify(&Method::HEAD, "/health"),
            Route::Own(Endpoint::Health)
        );
        assert_eq!(
            classify(&Method::POST, "/auth/token"),
            Route::Own(Endpoint::Token)
        );
        assert_eq!(
            classify(&Method::GET, "/auth/token"),
            Route::MethodNotAllowed("POST")
        );
        assert_eq!(
            classify(&Method::PATCH, "/auth/users/me"),
            Route::Own(Endpoint::UpdateMe)
        );
        assert_eq!(
            classify(&Method::DELETE, "/auth/users/me"),
            Route::MethodNotAllowed("GET, PATCH")
        );
        assert_eq!(classify(&Method::GET, "/nowhere"), Route::NotFound);
        assert_eq!(classify(&Method::GET, "/auth/users/me/"), Route::NotFound);
    }
}
