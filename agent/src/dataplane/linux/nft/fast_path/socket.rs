//! Our nfnetlink socket: sends a batch and reads every acknowledgement,
//! parsed by netlink-packet-core.

use netlink_packet_core::{
    Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::batch::Batch;
use super::NfnlError;

/// Our nfnetlink socket, in the network namespace of the thread that
/// opened it (like the rtnetlink one).
pub struct NfnlSocket {
    socket: Socket,
}

impl NfnlSocket {
    pub fn open() -> Result<Self, NfnlError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Open)?;
        socket.bind_auto().map_err(NfnlError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NfnlError::Open)?;
        // An error then echoes only the header of the refused message.
        let _ = socket.set_cap_ack(true);
        socket.set_non_blocking(true).map_err(NfnlError::Open)?;
        Ok(NfnlSocket { socket })
    }

    /// Send the batch and check every acknowledgement. The kernel handles a
    /// batch inside `send`, so every answer is queued when `send` returns.
    pub fn commit(&self, batch: &Batch) -> Result<(), NfnlError> {
        let mut buf = vec![0u8; 64 * 1024];
        self.drain_stale(&mut buf);
        let sent = self.socket.send(&batch.bytes, 0).map_err(NfnlError::Send)?;
        if sent != batch.bytes.len() {
            return Err(NfnlError::Send(std::io::Error::other("short send")));
        }
        let expected = batch.messages();
        let mut acked = 0;
        while acked < expected {
            let len = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(NfnlError::MissingAcks {
                        got: acked,
                        expected,
                    })
                }
                Err(e) => return Err(NfnlError::Receive(e)),
            };
            acked += check_acks(&buf[..len], batch)?;
        }
        Ok(())
    }

    /// Answers left from an earlier batch that failed half-way through
    /// reading must not be taken for this one's.
    fn drain_stale(&self, buf: &mut [u8]) {
        while self.socket.recv(&mut &mut buf[..], 0).is_ok() {}
    }
}

/// Anything but an acknowledgement on our socket: nothing we read.
struct OtherAnswer;

impl NetlinkDeserializable for OtherAnswer {
    type Error = std::convert::Infallible;

    fn deserialize(_: &NetlinkHeader, _: &[u8]) -> Result<Self, Self::Error> {
        Ok(OtherAnswer)
    }
}

/// Acknowledgements in one datagram; the first refusal is the error.
pub(super) fn check_acks(mut datagram: &[u8], batch: &Batch) -> Result<usize, NfnlError> {
    let header_len = NetlinkHeader::default().buffer_len();
    let mut acked = 0;
    while datagram.len() >= header_len {
        // Checks the length field against the datagram before reading on.
        let message = NetlinkMessage::<OtherAnswer>::deserialize(datagram)
            .map_err(|_| NfnlError::Malformed)?;
        if let NetlinkPayload::Error(answer) = &message.payload {
            if answer.code.is_some() {
                let seq = message.header.sequence_number;
                let index = seq.wrapping_sub(batch.first_seq) as usize;
                let what = batch.purposes.get(index).cloned().unwrap_or_default();
                let error = answer.to_io();
                return Err(NfnlError::Refused { what, error });
            }
            acked += 1;
        }
        let len = message.header.length as usize;
        datagram = &datagram[len.next_multiple_of(4).min(datagram.len())..];
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENOENT: i32 = 2;

    /// An `NLMSG_ERROR` answer to message `seq` with `errno` (0: an ack).
    fn answer(seq: u32, errno: i32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(36u32.to_ne_bytes()); // 16 + code 4 + echoed header 16
        bytes.extend(2u16.to_ne_bytes()); // NLMSG_ERROR
        bytes.extend(0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        bytes.extend(seq.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend((-errno).to_ne_bytes());
        bytes.extend([0u8; 16]);
        bytes
    }

    fn batch() -> Batch {
        Batch {
            bytes: Vec::new(),
            first_seq: 2,
            purposes: vec!["add chain inet edgenet in_x".into(), "flush chain".into()],
        }
    }

    #[test]
    fn acknowledgements_are_counted_and_a_refusal_names_its_message() {
        let mut datagram = answer(2, 0);
        datagram.extend(answer(3, 0));
        assert_eq!(check_acks(&datagram, &batch()).unwrap(), 2);
        let mut datagram = answer(2, 0);
        datagram.extend(answer(3, ENOENT));
        match check_acks(&datagram, &batch()) {
            Err(NfnlError::Refused { what, error }) => {
                assert_eq!(what, "flush chain");
                assert_eq!(error.raw_os_error(), Some(ENOENT));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_length_past_the_datagram_is_malformed() {
        let mut datagram = answer(2, 0);
        datagram[0..4].copy_from_slice(&400u32.to_ne_bytes());
        assert!(matches!(
            check_acks(&datagram, &batch()),
            Err(NfnlError::Malformed)
        ));
    }
}
