//! The MongoDB wire protocol gateway: framing, handshake, authentication
//! and command translation. It holds no data and decides no access: every
//! call goes to a backend with the authenticated principal.
