package nft

import (
	"strings"
	"testing"
)

func TestCheckCapEff(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		wantErr string
	}{
		{"root", "Name:\tx\nCapEff:\t000001ffffffffff\n", ""},
		{"net admin only", "CapEff:\t0000000000001000\n", ""},
		{"no caps", "CapEff:\t0000000000000000\n", "CAP_NET_ADMIN"},
		{"other caps", "CapEff:\t0000000000000fff\n", "CAP_NET_ADMIN"},
		{"garbage", "CapEff:\tzz\n", "parsing CapEff"},
		{"missing", "Name:\tx\n", "no CapEff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCapEff(strings.NewReader(tt.status))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
