//! The nf_tables numbers that no crate we depend on exports for every
//! target: message types, attribute numbers and verdict codes from
//! linux/netfilter/nfnetlink.h and linux/netfilter/nf_tables.h (stable
//! kernel ABI), and libnftnl's comment user-data type.
//!
//! The netlink ones (`NLM_F_*`, `NLA_F_NESTED`, `NLMSG_ERROR`, header and
//! attribute layout) come from netlink-packet-core, the protocol number
//! from netlink-sys. libc has these nf_tables numbers too, but this crate
//! links libc on glibc targets only (for `malloc_trim`), and the fast path
//! builds wherever the agent does.

// nfnetlink: the subsystem, batch markers, message header version.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFNETLINK_V0: u8 = 0;

// nf_tables message types.
pub const NFT_MSG_NEWCHAIN: u8 = 3;
pub const NFT_MSG_DELCHAIN: u8 = 5;
pub const NFT_MSG_NEWRULE: u8 = 6;
pub const NFT_MSG_DELRULE: u8 = 8;
pub const NFT_MSG_NEWSETELEM: u8 = 12;
pub const NFT_MSG_DELSETELEM: u8 = 14;

// Families (nfgenmsg).
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_BRIDGE: u8 = 7;

// Attribute numbers: chains, rules, expression lists, expressions.
pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_RULE_USERDATA: u16 = 7;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;

// Attribute numbers: data, verdicts, set elements.
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;
pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub const NFTA_SET_ELEM_KEY: u16 = 1;
pub const NFTA_SET_ELEM_DATA: u16 = 2;

// Registers and verdict codes.
pub const NFT_REG_VERDICT: u32 = 0;
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_RETURN: i32 = -5;

// Sizes the kernel holds us to.
/// An interface name with its NUL (linux/if.h).
pub const IFNAMSIZ: usize = 16;
/// The most user data (our comment, as a TLV) a rule may carry.
pub const NFT_USERDATA_MAXLEN: usize = 256;

/// libnftnl's user-data type for a rule comment (what `nft` reads back).
pub const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
