//! The AS2 protocol core (RFC 4130): pure functions from bytes and keys to bytes.
//! No sockets, no files, no clock except values passed in.
