// Command sarama-check drives the Go Kafka client sarama (Debian's
// golang-github-shopify-sarama-dev, 1.22) against a Berth node, for the
// `kafka_go` integration tests (crates/berth/tests/it/kafka_go.rs).
//
// Build (GOPATH mode, Debian's Go packages, no module proxy):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o sarama-check .
//
// Usage:
//
//	sarama-check [flags] CHECK
//
// Every flag defaults to an environment variable: -bootstrap
// ($KAFKA_BOOTSTRAP, host:port), -ca ($KAFKA_CA_FILE, the cluster CA in
// PEM), -user ($KAFKA_USER), -password ($KAFKA_PASSWORD), -mechanism
// ($KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), -topic
// ($KAFKA_TOPIC) and -group ($KAFKA_GROUP, default TOPIC-group). Every
// connection is SASL_SSL: TLS verified against the CA, then SASL.
//
// A check exits 0 when the broker behaved as Kafka does, and 1 with one line
// "FAIL CHECK: reason" otherwise. Checks:
//
//	produce-consume  a synchronous producer with acks=all (WaitForAll)
//	                 writes 20 keyed records with a header to partition 0 of
//	                 TOPIC (fresh) in each of none, snappy and lz4 (one batch
//	                 per codec); the offsets it is told are 0, 1, 2, ...;
//	                 ListOffsets gives the end; a partition consumer reads
//	                 them back from the oldest offset, in order, with their
//	                 keys, values and headers
//	group            two members of one consumer group (sarama's
//	                 ConsumerGroup, range strategy) on TOPIC (2+ partitions,
//	                 made by the test): the partitions are split between
//	                 them; every record produced then is consumed exactly
//	                 once, by the member holding its partition; one member
//	                 leaves (committing first) and the other takes over all
//	                 partitions and consumes exactly what is produced
//	                 afterwards, nothing twice
//	bad-login        connecting must fail SASL authentication
//	zstd-v3          a zstd batch as sarama 1.22 sends it, in Produce v3,
//	                 must fail with UNSUPPORTED_COMPRESSION_TYPE (Kafka
//	                 takes zstd from Produce v7 on, KIP-110)
//
// SCRAM uses github.com/xdg-go/scram (Debian
// golang-github-xdg-go-scram-dev): sarama 1.22 leaves the SCRAM client to
// the application (Net.SASL.SCRAMClientGeneratorFunc). Group members set
// an offset retention so that sarama commits with OffsetCommit v2 (without
// one it sends v1, which Kafka 4 and Berth no longer serve; sarama 1.22
// picks versions from Config.Version, not ApiVersions). For the same
// reason zstd cannot be used with sarama 1.22: it sends zstd batches in
// Produce v3, which Kafka refuses (zstd-v3 checks that Berth does too).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
	"github.com/xdg-go/scram"
)

// deadline bounds every wait of a check.
const deadline = 30 * time.Second

var (
	check     string
	bootstrap = flag.String("bootstrap", os.Getenv("KAFKA_BOOTSTRAP"), "broker host:port")
	caFile    = flag.String("ca", os.Getenv("KAFKA_CA_FILE"), "cluster CA (PEM)")
	user      = flag.String("user", os.Getenv("KAFKA_USER"), "SASL user name")
	password  = flag.String("password", os.Getenv("KAFKA_PASSWORD"), "SASL password (or a ticket)")
	mechanism = flag.String("mechanism", envOr("KAFKA_SASL_MECHANISM", "PLAIN"), "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
	topic     = flag.String("topic", os.Getenv("KAFKA_TOPIC"), "topic")
	group     = flag.String("group", os.Getenv("KAFKA_GROUP"), "consumer group (default TOPIC-group)")
)

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// fail ends the check with its one-line reason.
func fail(format string, args ...interface{}) {
	msg := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	fmt.Printf("FAIL %s: %s\n", check, msg)
	os.Exit(1)
}

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: sarama-check [flags] produce-consume|group|bad-login|zstd-v3")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	check = flag.Arg(0)
	if *bootstrap == "" || *topic == "" && check != "bad-login" {
		fail("-bootstrap and -topic are required")
	}
	if *group == "" {
		*group = *topic + "-group"
	}
	if os.Getenv("SARAMA_DEBUG") != "" {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.Lmicroseconds)
	}
	var err error
	switch check {
	case "produce-consume":
		err = produceConsume()
	case "group":
		err = groupCheck()
	case "bad-login":
		err = badLogin()
	case "zstd-v3":
		err = zstdInProduceV3()
	default:
		fail("unknown check")
	}
	if err != nil {
		fail("%v", err)
	}
	fmt.Printf("ok %s\n", check)
}

// newConfig is the client configuration every check starts from: SASL_SSL
// with the cluster CA, protocol versions of Kafka 2.0 (sarama picks request
// versions from Config.Version rather than ApiVersions).
func newConfig() *sarama.Config {
	pem, err := ioutil.ReadFile(*caFile)
	if err != nil {
		fail("CA file: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *caFile)
	}
	c := sarama.NewConfig()
	c.Version = sarama.V2_0_0_0
	c.ClientID = "berth-sarama-check"
	c.Net.TLS.Enable = true
	c.Net.TLS.Config = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	c.Net.SASL.Enable = true
	c.Net.SASL.User = *user
	c.Net.SASL.Password = *password
	c.Net.DialTimeout = 10 * time.Second
	c.Net.ReadTimeout = deadline
	c.Net.WriteTimeout = deadline
	switch *mechanism {
	case "PLAIN":
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA256} }
	case "SCRAM-SHA-512":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA512} }
	default:
		fail("unknown SASL mechanism %q", *mechanism)
	}
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Consumer.Retry.Backoff = 100 * time.Millisecond
	c.Consumer.Return.Errors = true
	return c
}

// scramClient adapts an xdg-go/scram conversation to sarama's SCRAMClient.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	client, err := s.hash.NewClient(user, password, authzID)
	if err != nil {
		return err
	}
	s.conv = client.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }

func (s *scramClient) Done() bool { return s.conv.Done() }

// record is what a check produced or consumed.
type record struct {
	partition int32
	offset    int64
	key       string
	value     string
	header    string
}

func produceConsume() error {
	brokers := []string{*bootstrap}
	var want []record
	for _, codec := range []struct {
		name  string
		codec sarama.CompressionCodec
	}{
		{"none", sarama.CompressionNone},
		{"snappy", sarama.CompressionSnappy},
		{"lz4", sarama.CompressionLZ4},
	} {
		c := newConfig()
		c.Producer.Compression = codec.codec
		c.Producer.Partitioner = sarama.NewManualPartitioner
		// One batch per codec: nothing leaves before all 20 are queued.
		c.Producer.Flush.Messages = 20
		c.Producer.Flush.Frequency = time.Second
		producer, err := sarama.NewSyncProducer(brokers, c)
		if err != nil {
			return fmt.Errorf("%s producer: %v", codec.name, err)
		}
		var msgs []*sarama.ProducerMessage
		for i := 0; i < 20; i++ {
			r := record{
				partition: 0,
				key:       fmt.Sprintf("k%d", len(want)+i),
				// Repetitive, so that compression has something to do.
				value:  strings.Repeat(fmt.Sprintf("%s-value-%d ", codec.name, i), 10),
				header: fmt.Sprint(i),
			}
			msgs = append(msgs, &sarama.ProducerMessage{
				Topic:     *topic,
				Partition: r.partition,
				Key:       sarama.StringEncoder(r.key),
				Value:     sarama.StringEncoder(r.value),
				Headers:   []sarama.RecordHeader{{Key: []byte("n"), Value: []byte(r.header)}},
			})
			want = append(want, r)
		}
		err = producer.SendMessages(msgs)
		_ = producer.Close()
		if err != nil {
			return fmt.Errorf("%s produce: %v", codec.name, err)
		}
		for i, m := range msgs {
			n := len(want) - len(msgs) + i
			want[n].offset = int64(n)
			if m.Offset != int64(n) || m.Partition != 0 {
				return fmt.Errorf("%s record %d acknowledged at %d/%d, want 0/%d",
					codec.name, i, m.Partition, m.Offset, n)
			}
		}
	}

	client, err := sarama.NewClient(brokers, newConfig())
	if err != nil {
		return fmt.Errorf("client: %v", err)
	}
	defer client.Close()
	end, err := client.GetOffset(*topic, 0, sarama.OffsetNewest)
	if err != nil {
		return fmt.Errorf("ListOffsets latest: %v", err)
	}
	start, err := client.GetOffset(*topic, 0, sarama.OffsetOldest)
	if err != nil {
		return fmt.Errorf("ListOffsets earliest: %v", err)
	}
	if start != 0 || end != int64(len(want)) {
		return fmt.Errorf("ListOffsets: log %d..%d, want 0..%d", start, end, len(want))
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return fmt.Errorf("consumer: %v", err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(*topic, 0, sarama.OffsetOldest)
	if err != nil {
		return fmt.Errorf("consume partition 0: %v", err)
	}
	defer pc.Close()
	timeout := time.After(deadline)
	for i, w := range want {
		select {
		case m := <-pc.Messages():
			got := record{partition: m.Partition, offset: m.Offset, key: string(m.Key), value: string(m.Value)}
			if len(m.Headers) == 1 && string(m.Headers[0].Key) == "n" {
				got.header = string(m.Headers[0].Value)
			}
			if got != w {
				return fmt.Errorf("record %d: got %+v, want %+v", i, got, w)
			}
		case err := <-pc.Errors():
			return fmt.Errorf("fetch: %v", err)
		case <-timeout:
			return fmt.Errorf("%d of %d records read in %v", i, len(want), deadline)
		}
	}
	if hw := pc.HighWaterMarkOffset(); hw != int64(len(want)) {
		return fmt.Errorf("high watermark %d, want %d", hw, len(want))
	}
	return nil
}

// member is one consumer of the group check: its current claims (set in
// Setup, cleared in Cleanup) and generation.
type member struct {
	name   string
	cg     sarama.ConsumerGroup
	events chan<- consumed
	done   chan struct{}

	mu         sync.Mutex
	generation int32
	claims     []int32
	lastErr    error
}

// consumed is one record a member was handed.
type consumed struct {
	member    string
	partition int32
	offset    int64
}

func (m *member) Setup(s sarama.ConsumerGroupSession) error {
	claims := append([]int32(nil), s.Claims()[*topic]...)
	sort.Slice(claims, func(i, j int) bool { return claims[i] < claims[j] })
	m.mu.Lock()
	m.generation, m.claims = s.GenerationID(), claims
	m.mu.Unlock()
	return nil
}

func (m *member) Cleanup(sarama.ConsumerGroupSession) error {
	m.mu.Lock()
	m.claims = nil
	m.mu.Unlock()
	return nil
}

func (m *member) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for msg := range c.Messages() {
		m.events <- consumed{m.name, msg.Partition, msg.Offset}
		s.MarkMessage(msg, "")
	}
	return nil
}

// state is the member's generation and claims (nil between sessions).
func (m *member) state() (int32, []int32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.generation, m.claims, m.lastErr
}

// join starts a member: it consumes until closed, joining again after
// every rebalance, as a sarama application does.
func join(name string, events chan<- consumed) (*member, error) {
	c := newConfig()
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	// With no retention set sarama 1.22 commits with OffsetCommit v1,
	// which Kafka 4 no longer accepts (KIP-896) and Berth does not serve
	// (v2+); a retention makes it send v2.
	c.Consumer.Offsets.Retention = 24 * time.Hour
	c.Consumer.Group.Session.Timeout = 6 * time.Second // the broker's minimum
	c.Consumer.Group.Heartbeat.Interval = 200 * time.Millisecond
	c.Consumer.Group.Rebalance.Timeout = 10 * time.Second
	c.Consumer.Group.Rebalance.Retry.Backoff = 100 * time.Millisecond
	cg, err := sarama.NewConsumerGroup([]string{*bootstrap}, *group, c)
	if err != nil {
		return nil, fmt.Errorf("member %s: %v", name, err)
	}
	m := &member{name: name, cg: cg, events: events, done: make(chan struct{})}
	go func() {
		for err := range cg.Errors() {
			m.mu.Lock()
			m.lastErr = err
			m.mu.Unlock()
		}
	}()
	go func() {
		defer close(m.done)
		for {
			err := cg.Consume(context.Background(), []string{*topic}, m)
			if err == sarama.ErrClosedConsumerGroup {
				return
			}
			if err != nil {
				m.mu.Lock()
				m.lastErr = err
				m.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return m, nil
}

// leave closes a member: it commits what it consumed and leaves the group.
func (m *member) leave() error {
	err := m.cg.Close()
	select {
	case <-m.done:
	case <-time.After(deadline):
		return fmt.Errorf("member %s still consuming %v after Close", m.name, deadline)
	}
	return err
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(what string, cond func() (bool, string)) error {
	end := time.Now().Add(deadline)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s: not after %v (%s)", what, deadline, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(ms ...*member) string {
	var parts []string
	for _, m := range ms {
		g, c, err := m.state()
		parts = append(parts, fmt.Sprintf("%s: generation %d claims %v last error %v", m.name, g, c, err))
	}
	return strings.Join(parts, "; ")
}

// produceSpread writes n keyed records round-robin over the partitions
// with acks=all and returns where they went.
func produceSpread(partitions []int32, n int, tag string) (map[consumed]bool, error) {
	c := newConfig()
	c.Producer.Partitioner = sarama.NewManualPartitioner
	producer, err := sarama.NewSyncProducer([]string{*bootstrap}, c)
	if err != nil {
		return nil, fmt.Errorf("producer: %v", err)
	}
	defer producer.Close()
	var msgs []*sarama.ProducerMessage
	for i := 0; i < n; i++ {
		msgs = append(msgs, &sarama.ProducerMessage{
			Topic:     *topic,
			Partition: partitions[i%len(partitions)],
			Key:       sarama.StringEncoder(fmt.Sprintf("%s-k%d", tag, i)),
			Value:     sarama.StringEncoder(fmt.Sprintf("%s-value-%d", tag, i)),
		})
	}
	if err := producer.SendMessages(msgs); err != nil {
		return nil, fmt.Errorf("produce %s: %v", tag, err)
	}
	out := make(map[consumed]bool)
	for _, m := range msgs {
		out[consumed{partition: m.Partition, offset: m.Offset}] = true
	}
	return out, nil
}

// collect reads events until every record of want was consumed; each must
// come once, from the member owner names for its partition.
func collect(events <-chan consumed, want map[consumed]bool, owner map[int32]string, seen map[consumed]string) error {
	timeout := time.After(deadline)
	left := len(want)
	for left > 0 {
		select {
		case e := <-events:
			k := consumed{partition: e.partition, offset: e.offset}
			if first, dup := seen[k]; dup {
				return fmt.Errorf("partition %d offset %d consumed twice (by %s, then %s)",
					e.partition, e.offset, first, e.member)
			}
			seen[k] = e.member
			if !want[k] {
				return fmt.Errorf("%s consumed partition %d offset %d, not produced in this round",
					e.member, e.partition, e.offset)
			}
			if owner[e.partition] != e.member {
				return fmt.Errorf("%s consumed partition %d offset %d, assigned to %s",
					e.member, e.partition, e.offset, owner[e.partition])
			}
			left--
		case <-timeout:
			return fmt.Errorf("%d of %d records consumed in %v", len(want)-left, len(want), deadline)
		}
	}
	return nil
}

func groupCheck() error {
	client, err := sarama.NewClient([]string{*bootstrap}, newConfig())
	if err != nil {
		return fmt.Errorf("client: %v", err)
	}
	partitions, err := client.Partitions(*topic)
	client.Close()
	if err != nil {
		return fmt.Errorf("metadata: %v", err)
	}
	if len(partitions) < 2 {
		return fmt.Errorf("topic has %d partitions, the check needs 2+", len(partitions))
	}
	all := fmt.Sprint(partitions)
	events := make(chan consumed, 1024)

	// One member alone holds every partition.
	a, err := join("a", events)
	if err != nil {
		return err
	}
	if err := waitFor("member a holds every partition", func() (bool, string) {
		_, c, _ := a.state()
		return fmt.Sprint(c) == all, describe(a)
	}); err != nil {
		return err
	}
	first, _, _ := a.state()

	// A second member: the next generation splits the partitions.
	b, err := join("b", events)
	if err != nil {
		return err
	}
	owner := make(map[int32]string)
	if err := waitFor("the partitions are split between a and b", func() (bool, string) {
		ga, ca, _ := a.state()
		gb, cb, _ := b.state()
		if ga != gb || ga <= first || len(ca) == 0 || len(cb) == 0 {
			return false, describe(a, b)
		}
		both := append(append([]int32(nil), ca...), cb...)
		sort.Slice(both, func(i, j int) bool { return both[i] < both[j] })
		return fmt.Sprint(both) == all, describe(a, b)
	}); err != nil {
		return err
	}
	split, ca, _ := a.state()
	_, cb, _ := b.state()
	for _, p := range ca {
		owner[p] = "a"
	}
	for _, p := range cb {
		owner[p] = "b"
	}

	seen := make(map[consumed]string)
	want, err := produceSpread(partitions, 40, "one")
	if err != nil {
		return err
	}
	if err := collect(events, want, owner, seen); err != nil {
		return fmt.Errorf("split %v/%v: %v", ca, cb, err)
	}

	// b leaves; a takes over every partition from the committed offsets.
	if err := b.leave(); err != nil {
		return fmt.Errorf("member b leaving: %v", err)
	}
	if err := waitFor("member a takes over every partition", func() (bool, string) {
		g, c, _ := a.state()
		return g > split && fmt.Sprint(c) == all, describe(a)
	}); err != nil {
		return err
	}
	for _, p := range partitions {
		owner[p] = "a"
	}
	want, err = produceSpread(partitions, 40, "two")
	if err != nil {
		return err
	}
	if err := collect(events, want, owner, seen); err != nil {
		return fmt.Errorf("after b left: %v", err)
	}
	// Nothing else arrives (no redelivery of committed records).
	select {
	case e := <-events:
		return fmt.Errorf("unexpected record: %s consumed partition %d offset %d", e.member, e.partition, e.offset)
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.leave(); err != nil {
		return fmt.Errorf("member a leaving: %v", err)
	}
	return nil
}

func badLogin() error {
	b := sarama.NewBroker(*bootstrap)
	if err := b.Open(newConfig()); err != nil {
		return fmt.Errorf("open: %v", err)
	}
	defer b.Close()
	_, err := b.GetMetadata(&sarama.MetadataRequest{Version: 1})
	if err == nil {
		return errors.New("a wrong password was accepted")
	}
	if err != sarama.ErrSASLAuthenticationFailed {
		return fmt.Errorf("want SASL_AUTHENTICATION_FAILED, got %v", err)
	}
	return nil
}

// zstdInProduceV3 produces a zstd batch the way sarama 1.22 does, in
// Produce v3; Kafka refuses zstd below v7 (KIP-110) with
// UNSUPPORTED_COMPRESSION_TYPE, and nothing is written.
func zstdInProduceV3() error {
	c := newConfig()
	c.Version = sarama.V2_1_0_0 // sarama's minimum for zstd
	c.Producer.Compression = sarama.CompressionZSTD
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Retry.Max = 0
	producer, err := sarama.NewSyncProducer([]string{*bootstrap}, c)
	if err != nil {
		return fmt.Errorf("producer: %v", err)
	}
	defer producer.Close()
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{
		Topic: *topic,
		Key:   sarama.StringEncoder("k"),
		Value: sarama.StringEncoder(strings.Repeat("zstd ", 20)),
	})
	if err == nil {
		return errors.New("a zstd batch in Produce v3 was accepted")
	}
	if err != sarama.ErrUnsupportedCompressionType {
		return fmt.Errorf("want UNSUPPORTED_COMPRESSION_TYPE, got %v", err)
	}
	return nil
}
