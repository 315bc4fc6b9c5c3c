//! Recognising the first packet of a new flow in an inner IP packet, without touching it.
//!
//! The agent must create a stack socket before the stack sees a flow's first packet (smoltcp has
//! no listen backlog and no wildcard port), so it looks at each decrypted packet first: a TCP SYN
//! or the first fragment of a UDP datagram. Anything malformed is simply not a new flow; the
//! stack itself then drops it.

use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

/// The start of a flow seen in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStart {
    /// A TCP SYN (without ACK) from `src` to `dst`.
    TcpSyn { src: SocketAddr, dst: SocketAddr },
    /// A UDP datagram (or its first fragment) from `src` to `dst`.
    Udp { src: SocketAddr, dst: SocketAddr },
}

/// Looks for the start of a flow in one inner IP packet.
pub fn flow_start(packet: &[u8]) -> Option<FlowStart> {
    match packet.first()? >> 4 {
        4 => from_ipv4(packet),
        6 => from_ipv6(packet),
        _ => None,
    }
}

fn from_ipv4(packet: &[u8]) -> Option<FlowStart> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.frag_offset() != 0 {
        return None;
    }
    let src = IpAddr::V4(ip.src_addr());
    let dst = IpAddr::V4(ip.dst_addr());
    transport(ip.next_header(), ip.payload(), src, dst)
}

fn from_ipv6(packet: &[u8]) -> Option<FlowStart> {
    let ip = Ipv6Packet::new_checked(packet).ok()?;
    let src = IpAddr::V6(ip.src_addr());
    let dst = IpAddr::V6(ip.dst_addr());
    let payload = ip.payload();
    if ip.next_header() != IpProtocol::Ipv6Frag {
        return transport(ip.next_header(), payload, src, dst);
    }
    // Fragment header: next header, reserved, offset (13 bits) and flags, identification.
    let header = payload.get(..IPV6_FRAGMENT_HEADER_BYTES)?;
    let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
    if offset != 0 {
        return None;
    }
    let next = IpProtocol::from(header[0]);
    transport(next, &payload[IPV6_FRAGMENT_HEADER_BYTES..], src, dst)
}

fn transport(protocol: IpProtocol, payload: &[u8], src: IpAddr, dst: IpAddr) -> Option<FlowStart> {
    match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).ok()?;
            if !tcp.syn() || tcp.ack() || tcp.rst() {
                return None;
            }
            let src = SocketAddr::new(src, tcp.src_port());
            let dst = SocketAddr::new(dst, tcp.dst_port());
            Some(FlowStart::TcpSyn { src, dst })
        }
        IpProtocol::Udp => {
            // A first fragment holds the UDP header but not the whole datagram: no length check.
            let udp = UdpPacket::new_unchecked(payload.get(..UDP_HEADER_BYTES)?);
            let src = SocketAddr::new(src, udp.src_port());
            let dst = SocketAddr::new(dst, udp.dst_port());
            Some(FlowStart::Udp { src, dst })
        }
        _ => None,
    }
}

const IPV6_FRAGMENT_HEADER_BYTES: usize = 8;
const UDP_HEADER_BYTES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ipv4_tcp(flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[10, 0, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&8080u16.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p
    }

    #[test]
    fn a_syn_starts_a_tcp_flow_and_a_syn_ack_does_not() {
        let start = flow_start(&ipv4_tcp(0x02)).unwrap();
        assert_eq!(
            start,
            FlowStart::TcpSyn {
                src: "10.0.0.2:40000".parse().unwrap(),
                dst: "10.0.0.1:8080".parse().unwrap()
            }
        );
        assert_eq!(flow_start(&ipv4_tcp(0x12)), None);
        assert_eq!(flow_start(&ipv4_tcp(0x10)), None);
    }

    #[test]
    fn truncated_packets_are_not_flows() {
        let p = ipv4_tcp(0x02);
        for len in 0..p.len() {
            assert_eq!(flow_start(&p[..len]), None, "length {len}");
        }
    }

    proptest! {
        #[test]
        fn no_bytes_panic_the_classifier(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = flow_start(&bytes);
        }
    }
}
