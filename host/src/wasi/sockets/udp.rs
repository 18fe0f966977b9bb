//! `wasi:sockets/udp` for an agent: wasmtime-wasi's, with a room check on the resource table
//! before `stream` (two datagram streams), so a guest at its handle cap gets
//! `new-socket-limit` instead of a trap. Binds, sends and receives are checked by
//! [`super::socket_addr_check`]; everything else is delegated unchanged.

use super::Sockets;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::bindings::sockets::network::{IpAddressFamily, IpSocketAddress, Network};
use wasmtime_wasi::p2::bindings::sockets::udp::{
    self, HostIncomingDatagramStream, HostOutgoingDatagramStream, HostUdpSocket,
    IncomingDatagramStream, OutgoingDatagramStream,
};
use wasmtime_wasi::p2::{DynPollable, SocketResult, UdpSocket};

type Socket = Resource<UdpSocket>;

impl udp::Host for Sockets<'_> {}

impl HostUdpSocket for Sockets<'_> {
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

    async fn stream(
        &mut self,
        this: Socket,
        remote_address: Option<IpSocketAddress>,
    ) -> SocketResult<(
        Resource<IncomingDatagramStream>,
        Resource<OutgoingDatagramStream>,
    )> {
        self.reserve(2, "udp-stream")?;
        self.inner.stream(this, remote_address).await
    }

    fn local_address(&mut self, this: Socket) -> SocketResult<IpSocketAddress> {
        self.inner.local_address(this)
    }

    fn remote_address(&mut self, this: Socket) -> SocketResult<IpSocketAddress> {
        self.inner.remote_address(this)
    }

    fn address_family(&mut self, this: Socket) -> wasmtime::Result<IpAddressFamily> {
        self.inner.address_family(this)
    }

    fn unicast_hop_limit(&mut self, this: Socket) -> SocketResult<u8> {
        self.inner.unicast_hop_limit(this)
    }

    fn set_unicast_hop_limit(&mut self, this: Socket, value: u8) -> SocketResult<()> {
        self.inner.set_unicast_hop_limit(this, value)
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
        HostUdpSocket::subscribe(&mut self.inner, this)
    }

    fn drop(&mut self, this: Socket) -> wasmtime::Result<()> {
        HostUdpSocket::drop(&mut self.inner, this)
    }
}

impl HostIncomingDatagramStream for Sockets<'_> {
    fn receive(
        &mut self,
        this: Resource<IncomingDatagramStream>,
        max_results: u64,
    ) -> SocketResult<Vec<udp::IncomingDatagram>> {
        self.inner.receive(this, max_results)
    }

    fn subscribe(
        &mut self,
        this: Resource<IncomingDatagramStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostIncomingDatagramStream::subscribe(&mut self.inner, this)
    }

    fn drop(&mut self, this: Resource<IncomingDatagramStream>) -> wasmtime::Result<()> {
        HostIncomingDatagramStream::drop(&mut self.inner, this)
    }
}

impl HostOutgoingDatagramStream for Sockets<'_> {
    fn check_send(&mut self, this: Resource<OutgoingDatagramStream>) -> SocketResult<u64> {
        self.inner.check_send(this)
    }

    fn send(
        &mut self,
        this: Resource<OutgoingDatagramStream>,
        datagrams: Vec<udp::OutgoingDatagram>,
    ) -> SocketResult<u64> {
        self.inner.send(this, datagrams)
    }

    fn subscribe(
        &mut self,
        this: Resource<OutgoingDatagramStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostOutgoingDatagramStream::subscribe(&mut self.inner, this)
    }

    async fn drop(&mut self, this: Resource<OutgoingDatagramStream>) -> wasmtime::Result<()> {
        HostOutgoingDatagramStream::drop(&mut self.inner, this).await
    }
}
