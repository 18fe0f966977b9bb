//! `wasi:sockets/tcp` for an agent: wasmtime-wasi's, with a room check on the resource table
//! before `finish-connect` (two streams) and `accept` (a socket and two streams), so a guest at
//! its handle cap gets `new-socket-limit` instead of a trap. Addresses are checked by
//! [`super::socket_addr_check`]; everything else is delegated unchanged.

use super::Sockets;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::bindings::sockets::network::{IpAddressFamily, IpSocketAddress, Network};
use wasmtime_wasi::p2::bindings::sockets::tcp::{self, HostTcpSocket, ShutdownType};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, SocketResult, TcpSocket};

type Socket = Resource<TcpSocket>;

impl tcp::Host for Sockets<'_> {}

impl HostTcpSocket for Sockets<'_> {
    async fn start_bind(
        &mut self,
        this: Socket,
        network: Resource<Network>,
        local_address: IpSocketAddress,
    ) -> SocketResult<()> {
        self.inner.start_bind(this, network, local_address).await
    }

    fn finish_bind(&mut self, this: Socket) -> SocketResult<()> {
        self.inner.finish_bind(this)
    }

    fn start_connect(
        &mut self,
        this: Socket,
        network: Resource<Network>,
        remote_address: IpSocketAddress,
    ) -> SocketResult<()> {
        self.inner.start_connect(this, network, remote_address)
    }

    fn finish_connect(
        &mut self,
        this: Socket,
    ) -> SocketResult<(Resource<DynInputStream>, Resource<DynOutputStream>)> {
        self.reserve(2, "finish-connect")?;
        self.inner.finish_connect(this)
    }

    async fn start_listen(&mut self, this: Socket) -> SocketResult<()> {
        self.inner.start_listen(this).await
    }

    fn finish_listen(&mut self, this: Socket) -> SocketResult<()> {
        self.inner.finish_listen(this)
    }

    fn accept(
        &mut self,
        this: Socket,
    ) -> SocketResult<(Socket, Resource<DynInputStream>, Resource<DynOutputStream>)> {
        self.reserve(3, "accept")?;
        self.inner.accept(this)
    }

    fn local_address(&mut self, this: Socket) -> SocketResult<IpSocketAddress> {
        self.inner.local_address(this)
    }

    fn remote_address(&mut self, this: Socket) -> SocketResult<IpSocketAddress> {
        self.inner.remote_address(this)
    }

    fn is_listening(&mut self, this: Socket) -> wasmtime::Result<bool> {
        self.inner.is_listening(this)
    }

    fn address_family(&mut self, this: Socket) -> wasmtime::Result<IpAddressFamily> {
        self.inner.address_family(this)
    }

    fn set_listen_backlog_size(&mut self, this: Socket, value: u64) -> SocketResult<()> {
        self.inner.set_listen_backlog_size(this, value)
    }

    fn keep_alive_enabled(&mut self, this: Socket) -> SocketResult<bool> {
        self.inner.keep_alive_enabled(this)
    }

    fn set_keep_alive_enabled(&mut self, this: Socket, value: bool) -> SocketResult<()> {
        self.inner.set_keep_alive_enabled(this, value)
    }

    fn keep_alive_idle_time(&mut self, this: Socket) -> SocketResult<u64> {
        self.inner.keep_alive_idle_time(this)
    }

    fn set_keep_alive_idle_time(&mut self, this: Socket, value: u64) -> SocketResult<()> {
        self.inner.set_keep_alive_idle_time(this, value)
    }

    fn keep_alive_interval(&mut self, this: Socket) -> SocketResult<u64> {
        self.inner.keep_alive_interval(this)
    }

    fn set_keep_alive_interval(&mut self, this: Socket, value: u64) -> SocketResult<()> {
        self.inner.set_keep_alive_interval(this, value)
    }

    fn keep_alive_count(&mut self, this: Socket) -> SocketResult<u32> {
        self.inner.keep_alive_count(this)
    }

    fn set_keep_alive_count(&mut self, this: Socket, value: u32) -> SocketResult<()> {
        self.inner.set_keep_alive_count(this, value)
    }

    fn hop_limit(&mut self, this: Socket) -> SocketResult<u8> {
        self.inner.hop_limit(this)
    }

    fn set_hop_limit(&mut self, this: Socket, value: u8) -> SocketResult<()> {
        self.inner.set_hop_limit(this, value)
    }

    fn receive_buffer_size(&mut self, this: Socket) -> SocketResult<u64> {
        self.inner.receive_buffer_size(this)
    }

    fn set_receive_buffer_size(&mut self, this: Socket, value: u64) -> SocketResult<()> {
        self.inner.set_receive_buffer_size(this, value)
    }

    fn send_buffer_size(&mut self, this: Socket) -> SocketResult<u64> {
        self.inner.send_buffer_size(this)
    }

    fn set_send_buffer_size(&mut self, this: Socket, value: u64) -> SocketResult<()> {
        self.inner.set_send_buffer_size(this, value)
    }

    fn subscribe(&mut self, this: Socket) -> wasmtime::Result<Resource<DynPollable>> {
        self.inner.subscribe(this)
    }

    fn shutdown(&mut self, this: Socket, shutdown_type: ShutdownType) -> SocketResult<()> {
        self.inner.shutdown(this, shutdown_type)
    }

    fn drop(&mut self, this: Socket) -> wasmtime::Result<()> {
        HostTcpSocket::drop(&mut self.inner, this)
    }
}
