package controlplane

import (
	"context"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"time"

	"github.com/edwarnicke/grpcfd"
	"google.golang.org/grpc/peer"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// passedFDs are the namespace descriptors a Request received through
// grpcfd (NSM's fd passing over unix sockets), by the inode:// URL that
// announced them. The dataplane is given file:///proc/PID/fd/N in their
// place for the duration of the Request, so it opens the caller's very
// namespace even without hostPID; what is stored and answered keeps the
// inode:// URL, which a restarted forwarder resolves by scanning /proc and
// /run/netns (internal/netns) like any inode:// URL that came without a
// descriptor.
type passedFDs struct {
	urls  map[string]string // inode URL -> file URL of the received descriptor
	files []*os.File
}

// receive waits up to wait for the descriptor behind rawURL from t (nil:
// the peer cannot pass descriptors). Descriptors travel with the message
// that announces them and grpcfd processes them in order, so one that was
// sent is there at once; a peer that names an inode without sending it
// costs wait, then the URL is resolved by scanning.
func (p *passedFDs) receive(ctx context.Context, log *slog.Logger, t grpcfd.FDRecver, rawURL string, wait time.Duration) {
	if t == nil || rawURL == "" {
		return
	}
	if _, done := p.urls[rawURL]; done {
		return
	}
	if u, err := url.Parse(rawURL); err != nil || u.Scheme != "inode" {
		return
	}
	ch, err := t.RecvFileByURL(rawURL)
	if err != nil {
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case f, ok := <-ch:
		if !ok || f == nil {
			return
		}
		if p.urls == nil {
			p.urls = map[string]string{}
		}
		p.urls[rawURL] = (&url.URL{Scheme: "file", Path: f.Name()}).String()
		p.files = append(p.files, f)
		log.DebugContext(ctx, "network namespace received by fd passing", "inode_url", rawURL, "file", f.Name())
	case <-timer.C:
		log.DebugContext(ctx, "no descriptor passed for inode URL; resolving it by scanning", "inode_url", rawURL)
	case <-ctx.Done():
	}
}

// view returns m as the dataplane should see it: with a received
// descriptor's path in place of its inode:// URL.
func (p *passedFDs) view(m forwarder.Mechanism) forwarder.Mechanism {
	raw := m.Params[forwarder.ParamNetNSURL]
	file, ok := p.urls[raw]
	if !ok {
		return m
	}
	m.Params = maps.Clone(m.Params)
	m.Params[forwarder.ParamNetNSURL] = file
	return m
}

// restore copies the parameters the dataplane filled into dst (from the
// view src), keeping dst's own namespace URL.
func restoreParams(dst, src forwarder.Mechanism) {
	for k, v := range src.Params {
		if k != forwarder.ParamNetNSURL {
			dst.Params[k] = v
		}
	}
}

func (p *passedFDs) close() {
	for _, f := range p.files {
		_ = f.Close()
	}
	p.files = nil
}

// fdRecver returns the grpcfd receiver of a call's peer, when the peer is
// connected over a unix socket with grpcfd's transport credentials.
func fdRecver(p *peer.Peer) grpcfd.FDRecver {
	if p == nil || p.Addr == nil {
		return nil
	}
	t, ok := grpcfd.FromPeer(p)
	if !ok {
		return nil
	}
	return t
}
