//! The `hostile` guest against every sandbox wall, one file per wall: [`fs`] (links, handles,
//! disk), [`net`] (sockets and name resolution), [`host`] (host-call arguments, output, stdio,
//! exit, identity). Each attack must end with its own precise error while the host goes on.

mod fs;
mod fs_tricks;
mod host;
mod net;
mod net_tricks;
