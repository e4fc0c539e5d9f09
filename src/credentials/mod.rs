//! What proves who a caller is and keeps guessing expensive: passwords (`password`),
//! tokens (`token`), refresh tokens (`refresh`), the one-time secrets of reset and
//! verification links (`one_time`) and the rate limits (`rate_limit`).

pub mod one_time;
pub mod password;
pub mod rate_limit;
pub mod refresh;
pub mod token;
