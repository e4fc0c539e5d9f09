//! What proves who a caller is and keeps guessing expensive: passwords (`password`),
//! tokens (`token`) and the login and registration rate limits (`rate_limit`).

pub mod password;
pub mod rate_limit;
pub mod refresh;
pub mod token;
