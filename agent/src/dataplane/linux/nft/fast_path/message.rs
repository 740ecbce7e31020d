//! nfnetlink messages and their attributes on netlink-packet-core's types,
//! every length checked against the field that carries it before it is
//! written.

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, Nla,
    NLA_F_NESTED, NLA_HEADER_SIZE,
};

use super::abi::*;
use super::NfnlError;

/// The most bytes an attribute's value can hold: its 16-bit length field
/// counts the attribute's header too.
pub const MAX_ATTRIBUTE_VALUE: usize = u16::MAX as usize - NLA_HEADER_SIZE;

/// The most bytes a comment can have: libnftnl's TLV gives it a one-byte
/// length that counts its NUL, and the whole TLV must fit the kernel's
/// user-data limit.
pub const MAX_COMMENT: usize = NFT_USERDATA_MAXLEN - 3;

/// nfgenmsg: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// One netlink attribute: a value, or attributes nested in it. Made only
/// through the constructors below, which refuse a value too long for the
/// 16-bit length field: netlink-packet-core's emitter casts the length to
/// `u16` as it writes it, so nothing longer may reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr(Form);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    Value(DefaultNla),
    Nested {
        /// With `NLA_F_NESTED` set.
        kind: u16,
        children: Vec<Attr>,
        value_len: usize,
    },
}

impl Attr {
    pub fn bytes(kind: u16, value: Vec<u8>) -> Result<Attr, NfnlError> {
        check_len("a netlink attribute", value.len(), MAX_ATTRIBUTE_VALUE)?;
        Ok(Attr(Form::Value(DefaultNla::new(kind, value))))
    }

    /// Text with its NUL, as nf_tables takes names.
    pub fn string(kind: u16, text: &str) -> Result<Attr, NfnlError> {
        let mut value = Vec::with_capacity(text.len() + 1);
        value.extend_from_slice(text.as_bytes());
        value.push(0);
        Attr::bytes(kind, value)
    }

    /// A 32-bit number in network order (four bytes: always fits).
    pub fn be32(kind: u16, value: u32) -> Attr {
        Attr(Form::Value(DefaultNla::new(
            kind,
            value.to_be_bytes().to_vec(),
        )))
    }

    pub fn nested(kind: u16, children: Vec<Attr>) -> Result<Attr, NfnlError> {
        // Each child's length is already in range; their sum may not be.
        let value_len = children.iter().map(|child| child.buffer_len()).sum();
        check_len("a nested netlink attribute", value_len, MAX_ATTRIBUTE_VALUE)?;
        Ok(Attr(Form::Nested {
            kind: kind | NLA_F_NESTED,
            children,
            value_len,
        }))
    }

    /// `kind` holding a verdict: its code and, for a jump, the chain.
    pub fn verdict(kind: u16, code: i32, chain: Option<&str>) -> Result<Attr, NfnlError> {
        // Verdict codes are written as the kernel's u32 view of them.
        let mut verdict = vec![Attr::be32(NFTA_VERDICT_CODE, code as u32)];
        if let Some(chain) = chain {
            verdict.push(Attr::string(NFTA_VERDICT_CHAIN, chain)?);
        }
        let data = Attr::nested(NFTA_DATA_VERDICT, verdict)?;
        Attr::nested(kind, vec![data])
    }

    /// `kind` holding plain data (`NFTA_DATA_VALUE`).
    pub fn data(kind: u16, value: Vec<u8>) -> Result<Attr, NfnlError> {
        Attr::nested(kind, vec![Attr::bytes(NFTA_DATA_VALUE, value)?])
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.0 {
            Form::Value(value) => value.value_len(),
            Form::Nested { value_len, .. } => *value_len,
        }
    }

    fn kind(&self) -> u16 {
        match &self.0 {
            Form::Value(value) => value.kind(),
            Form::Nested { kind, .. } => *kind,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.0 {
            Form::Value(value) => value.emit_value(buffer),
            Form::Nested { children, .. } => children.as_slice().emit(buffer),
        }
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), NfnlError> {
    if len > max {
        return Err(NfnlError::TooLong { what, len, max });
    }
    Ok(())
}

/// libnftnl's user-data TLV for a comment: type, length, text with its NUL.
pub fn comment_udata(comment: &str) -> Result<Vec<u8>, NfnlError> {
    check_len("a rule comment", comment.len(), MAX_COMMENT)?;
    let len = u8::try_from(comment.len() + 1).expect("MAX_COMMENT keeps it below 256");
    let mut udata = Vec::with_capacity(comment.len() + 3);
    udata.extend([NFTNL_UDATA_RULE_COMMENT, len]);
    udata.extend(comment.as_bytes());
    udata.push(0);
    Ok(udata)
}

/// The body of one nfnetlink message: nfgenmsg and the attributes.
#[derive(Debug)]
pub struct NfgenMessage {
    pub message_type: u16,
    pub family: u8,
    /// Big endian on the wire; a batch marker names the subsystem here.
    pub res_id: u16,
    pub attributes: Vec<Attr>,
}

impl NfgenMessage {
    /// An nf_tables request (`NFT_MSG_*`) for a table of `family`.
    pub fn nf_tables(message: u8, family: u8, attributes: Vec<Attr>) -> Self {
        NfgenMessage {
            message_type: (NFNL_SUBSYS_NFTABLES << 8) | u16::from(message),
            family,
            res_id: 0,
            attributes,
        }
    }

    /// A batch begin or end marker.
    pub fn batch_marker(message_type: u16) -> Self {
        NfgenMessage {
            message_type,
            family: NFPROTO_UNSPEC,
            res_id: NFNL_SUBSYS_NFTABLES,
            attributes: Vec::new(),
        }
    }

    /// Appends the message, with its netlink header, to `out`.
    pub fn write(
        self,
        flags: u16,
        sequence_number: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), NfnlError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence_number;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(self));
        let len = message.buffer_len();
        // `finalize` casts the length into the header's 32-bit field.
        check_len("a netlink message", len, u32::MAX as usize)?;
        message.finalize();
        let start = out.len();
        out.resize(start + len, 0);
        message.serialize(&mut out[start..]);
        Ok(())
    }
}

impl NetlinkSerializable for NfgenMessage {
    fn message_type(&self) -> u16 {
        self.message_type
    }

    fn buffer_len(&self) -> usize {
        NFGENMSG_LEN + self.attributes.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = NFNETLINK_V0;
        buffer[2..NFGENMSG_LEN].copy_from_slice(&self.res_id.to_be_bytes());
        self.attributes.as_slice().emit(&mut buffer[NFGENMSG_LEN..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn too_long(result: Result<impl std::fmt::Debug, NfnlError>) -> (usize, usize) {
        match result {
            Err(NfnlError::TooLong { len, max, .. }) => (len, max),
            other => panic!("expected a length error, got {other:?}"),
        }
    }

    #[test]
    fn comments_are_libnftnl_user_data() {
        assert_eq!(comment_udata("ab").unwrap(), vec![0, 3, b'a', b'b', 0]);
    }

    #[test]
    fn the_longest_comment_fills_the_user_data_exactly() {
        let udata = comment_udata(&"c".repeat(MAX_COMMENT)).unwrap();
        assert_eq!(udata.len(), NFT_USERDATA_MAXLEN);
        assert_eq!(usize::from(udata[1]), MAX_COMMENT + 1);
    }

    #[test]
    fn a_comment_past_the_limit_is_an_error_not_a_wrapped_length() {
        // 300 + 1 would wrap to 45 in the one-byte length.
        assert_eq!(
            too_long(comment_udata(&"c".repeat(300))),
            (300, MAX_COMMENT)
        );
        assert_eq!(
            too_long(comment_udata(&"c".repeat(65_579))),
            (65_579, MAX_COMMENT)
        );
        too_long(comment_udata(&"c".repeat(MAX_COMMENT + 1)));
    }

    #[test]
    fn an_attribute_past_its_16_bit_length_is_an_error() {
        let fits = Attr::bytes(1, vec![0; MAX_ATTRIBUTE_VALUE]).unwrap();
        assert_eq!(fits.buffer_len() % 4, 0);
        assert_eq!(
            too_long(Attr::bytes(1, vec![0; MAX_ATTRIBUTE_VALUE + 1])),
            (MAX_ATTRIBUTE_VALUE + 1, MAX_ATTRIBUTE_VALUE)
        );
        // 65,579 bytes as u16 would be 43.
        too_long(Attr::string(1, &"n".repeat(65_578)));
    }

    #[test]
    fn nested_attributes_are_checked_as_a_whole() {
        let half = || Attr::bytes(1, vec![0; MAX_ATTRIBUTE_VALUE / 2]).unwrap();
        let (len, max) = too_long(Attr::nested(2, vec![half(), half()]));
        assert!(len > max);
        assert!(Attr::nested(2, vec![half()]).is_ok());
    }

    #[test]
    fn a_message_is_its_header_and_aligned_attributes() {
        let attributes = vec![Attr::string(1, "edgenet").unwrap(), Attr::be32(2, 7)];
        let mut out = Vec::new();
        NfgenMessage::nf_tables(NFT_MSG_NEWCHAIN, NFPROTO_INET, attributes)
            .write(1, 9, &mut out)
            .unwrap();
        // header 16, nfgenmsg 4, "edgenet\0" 4 + 8, be32 4 + 4.
        assert_eq!(out.len(), 40);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()), 40);
        assert_eq!(
            u16::from_ne_bytes(out[4..6].try_into().unwrap()),
            (NFNL_SUBSYS_NFTABLES << 8) | 3
        );
        assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 9);
        assert_eq!(&out[16..20], &[NFPROTO_INET, 0, 0, 0]);
        assert_eq!(&out[20..24], &[12, 0, 1, 0]);
        assert_eq!(&out[36..40], &7u32.to_be_bytes());
    }
}
