package nsmpath

import (
	"testing"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
)

func segs(names ...string) []*networkservice.PathSegment {
	out := make([]*networkservice.PathSegment, 0, len(names))
	for _, n := range names {
		out = append(out, &networkservice.PathSegment{Name: n, Id: n + "-id"})
	}
	return out
}

func TestUpdate(t *testing.T) {
	tests := []struct {
		name      string
		path      *networkservice.Path
		wantIndex uint32
		wantPrev  uint32
		wantID    string
		wantLen   int
	}{
		{"empty path", nil, 0, 0, "new", 1},
		{"empty path keeps the connection id", &networkservice.Path{}, 0, 0, "conn-id", 1},
		{"insert after caller", &networkservice.Path{Index: 0, PathSegments: segs("nsc")}, 1, 0, "new", 2},
		{"refresh: next is ours", &networkservice.Path{Index: 1, PathSegments: segs("nsc", "nsmgr", "fwd", "nse")}, 2, 1, "fwd-id", 4},
		{"current is ours", &networkservice.Path{Index: 2, PathSegments: segs("nsc", "nsmgr", "fwd")}, 2, 2, "fwd-id", 3},
		{"another hop's segment becomes ours, tail kept", &networkservice.Path{Index: 1, PathSegments: segs("nsc", "nsmgr", "other", "nse")}, 2, 1, "new", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := &networkservice.Connection{Path: tt.path}
			if tt.wantID == "conn-id" {
				conn.Id = "conn-id"
			}
			prev, err := Update(conn, "fwd", "new")
			if err != nil {
				t.Fatal(err)
			}
			if prev != tt.wantPrev || conn.GetPath().GetIndex() != tt.wantIndex || conn.GetId() != tt.wantID || len(conn.GetPath().GetPathSegments()) != tt.wantLen {
				t.Fatalf("got prev=%d index=%d id=%q len=%d, want %d %d %q %d", prev, conn.GetPath().GetIndex(), conn.GetId(),
					len(conn.GetPath().GetPathSegments()), tt.wantPrev, tt.wantIndex, tt.wantID, tt.wantLen)
			}
			if id, ok := Find(conn, "fwd"); !ok || id != tt.wantID {
				t.Fatalf("Find = %q, %v", id, ok)
			}
			Restore(conn, prev)
			if conn.GetPath().GetIndex() != tt.wantPrev {
				t.Fatalf("Restore: index %d", conn.GetPath().GetIndex())
			}
		})
	}
}

func TestUpdateIndexOutOfRange(t *testing.T) {
	conn := &networkservice.Connection{Path: &networkservice.Path{Index: 3, PathSegments: segs("nsc")}}
	if _, err := Update(conn, "fwd", "new"); err == nil {
		t.Fatal("want error for index out of range")
	}
}
