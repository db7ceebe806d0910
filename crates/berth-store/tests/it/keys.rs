use berth_store::keys::{self, Component, Key, Kind};
use proptest::prelude::*;

/// A key as a tuple; the derived order is the tuple order the encoding must preserve.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tuple {
    volume: u64,
    kind: u8,
    object: u64,
    components: Vec<Component>,
}

impl Tuple {
    fn encode(&self) -> Vec<u8> {
        let kind = Kind::try_from(self.kind).unwrap();
        self.components
            .iter()
            .fold(Key::new(self.volume, kind, self.object), |k, c| {
                k.component(c)
            })
            .build()
    }
}

fn small_u64() -> impl Strategy<Value = u64> {
    // Mix tiny values (likely collisions, so equal prefixes) with the full range.
    prop_oneof![0u64..4, any::<u64>(), Just(u64::MAX)]
}

fn component() -> impl Strategy<Value = Component> {
    prop_oneof![
        small_u64().prop_map(Component::U64),
        // Bytes rich in 0x00, 0x01 and 0xFF: the escaping edge cases.
        prop::collection::vec(
            prop_oneof![Just(0u8), Just(1u8), Just(0xFFu8), any::<u8>()],
            0..6
        )
        .prop_map(Component::Bytes),
        "[a-c\u{0}\u{e9}]{0,4}".prop_map(Component::Str),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    (
        small_u64(),
        prop::sample::select(Kind::ALL.map(Kind::as_u8).to_vec()),
        small_u64(),
        prop::collection::vec(component(), 0..4),
    )
        .prop_map(|(volume, kind, object, components)| Tuple {
            volume,
            kind,
            object,
            components,
        })
}

fn in_range(k: &[u8], (start, end): &(Vec<u8>, Vec<u8>)) -> bool {
    k >= start.as_slice() && (end.is_empty() || k < end.as_slice())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn order_is_preserved(a in tuple(), b in tuple()) {
        prop_assert_eq!(a.cmp(&b), a.encode().cmp(&b.encode()));
    }

    #[test]
    fn decode_inverts_encode(t in tuple()) {
        let d = keys::decode(&t.encode()).unwrap();
        prop_assert_eq!(d.volume, t.volume);
        prop_assert_eq!(d.kind.as_u8(), t.kind);
        prop_assert_eq!(d.object, t.object);
        prop_assert_eq!(d.components, t.components);
    }

    #[test]
    fn prefix_ranges_contain_exactly_their_keys(a in tuple(), b in tuple()) {
        let kind_a = Kind::try_from(a.kind).unwrap();
        let kb = b.encode();
        prop_assert_eq!(in_range(&kb, &keys::volume_range(a.volume)), b.volume == a.volume);
        prop_assert_eq!(
            in_range(&kb, &keys::kind_range(a.volume, kind_a)),
            b.volume == a.volume && b.kind == a.kind
        );
        prop_assert_eq!(
            in_range(&kb, &keys::object_range(a.volume, kind_a, a.object)),
            b.volume == a.volume && b.kind == a.kind && b.object == a.object
        );
        // prefix_end on an arbitrary encoded key: b is "under" a's key iff it starts with it.
        let ka = a.encode();
        let r = (ka.clone(), keys::prefix_end(&ka));
        prop_assert_eq!(in_range(&kb, &r), kb.starts_with(&ka));
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = keys::decode(&bytes);
    }

    #[test]
    fn prefix_end_is_tight(p in prop::collection::vec(prop_oneof![Just(0xFFu8), any::<u8>()], 0..6),
                           s in prop::collection::vec(any::<u8>(), 0..4)) {
        let end = keys::prefix_end(&p);
        let mut with = p.clone();
        with.extend_from_slice(&s);
        // Every extension of p is below the end...
        prop_assert!(end.is_empty() || with < end);
        // ...and the end itself does not start with p.
        prop_assert!(end.is_empty() || !end.starts_with(&p));
    }
}
