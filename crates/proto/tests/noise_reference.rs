//! The version-3 handshake is Noise `NNpsk0` as specified, not only as `crypt`'s own primitives
//! (all from aws-lc-rs) see it: with the same pre-shared key and ephemeral keys, snow's reference
//! primitives (RustCrypto's AES-GCM, curve25519-dalek, sha2) produce the same hello, welcome and
//! transfer-key message byte for byte, and read ours.

use snow::Builder;
use teecast_proto::auth::Key;
use teecast_proto::crypt::{self, Initiator, TransferKey};
use teecast_proto::wire::PREFIX_LEN;

fn reference(psk: &[u8; 32], ephemeral: &[u8; 32], initiator: bool) -> snow::HandshakeState {
    let builder = Builder::new(crypt::NOISE_PROTOCOL.parse().unwrap())
        .psk(0, psk)
        .unwrap()
        .prologue(crypt::PROLOGUE)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(ephemeral);
    if initiator {
        builder.build_initiator().unwrap()
    } else {
        builder.build_responder().unwrap()
    }
}

#[test]
fn the_handshake_is_noise_nnpsk0_byte_for_byte() {
    let psk = [0x11; 32];
    let (e_sender, e_receiver) = ([0x22; 32], [0x44; 32]);
    let transfer = TransferKey::new([0x55; 16], [0x66; 32]);
    let mut plain = [0x55; 48];
    plain[16..].fill(0x66);

    // Ours, both sides.
    let key = Key::from_bytes(psk);
    let (initiator, hello) = Initiator::start(&key, e_sender).unwrap();
    let (mut rx, welcome) = crypt::respond(&key, e_receiver, &hello).unwrap();
    let mut tx = initiator.welcome(&welcome).unwrap();
    let key_message = tx.send_transfer_key(&transfer).unwrap();
    assert_eq!(rx.receive_transfer_key(&key_message).unwrap(), transfer);

    // The reference sender makes the same hello and transfer-key message, and reads our welcome.
    let mut buf = [0u8; 128];
    let mut ref_tx = reference(&psk, &e_sender, true);
    let n = ref_tx.write_message(&[], &mut buf).unwrap();
    assert_eq!(&buf[..n], &hello[PREFIX_LEN..], "hello");
    ref_tx
        .read_message(&welcome[PREFIX_LEN..], &mut buf)
        .unwrap();
    let mut ref_tx = ref_tx.into_transport_mode().unwrap();
    let n = ref_tx.write_message(&plain, &mut buf).unwrap();
    assert_eq!(&buf[..n], &key_message[PREFIX_LEN..], "transfer key");

    // The reference receiver reads our hello and makes the same welcome.
    let mut ref_rx = reference(&psk, &e_receiver, false);
    ref_rx.read_message(&hello[PREFIX_LEN..], &mut buf).unwrap();
    let n = ref_rx.write_message(&[], &mut buf).unwrap();
    assert_eq!(&buf[..n], &welcome[PREFIX_LEN..], "welcome");
    let mut ref_rx = ref_rx.into_transport_mode().unwrap();
    let n = ref_rx
        .read_message(&key_message[PREFIX_LEN..], &mut buf)
        .unwrap();
    assert_eq!(&buf[..n], &plain);
}
