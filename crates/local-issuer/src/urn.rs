//! The OAuth 2.0 Token Exchange (RFC 8693) identifiers the tests send to `/v1/token`: one set, so
//! a typo in a test cannot pass for a refusal the broker never made.

/// `grant_type` of a token exchange, the only grant `/v1/token` accepts.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// `subject_token_type` of a GitLab CI ID token, the only subject type the broker accepts.
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A SAML 2.0 assertion: a real token type the broker must refuse as a subject.
pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";

/// An OAuth access token: a real token type the broker must refuse as a subject.
pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
