// golist lists a tar archive the way docker and containerd read layers: with Go's archive/tar.
//
// It reads the archive from stdin and writes one JSON object per line: one per entry returned by
// tar.Reader.Next (in order, meta headers applied, PAX global headers returned as entries), then
// a last line {"end": "ok", "consumed": N} or {"end": "error", "error": "...", "consumed": N}.
// Byte strings are hex so that any name survives; "data" is the SHA-256 of what Read gives back
// for the entry (sparse files expanded; empty, and "read" -1, for entries of more than 64 MiB),
// "consumed" the bytes Go's reader took from the input.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"sort"
	"strings"
)

type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type entry struct {
	Name     string     `json:"name"`
	Type     int        `json:"type"`
	Size     int64      `json:"size"`
	Mode     int64      `json:"mode"`
	UID      int        `json:"uid"`
	GID      int        `json:"gid"`
	MtimeS   int64      `json:"mtime_s"`
	MtimeNs  int        `json:"mtime_ns"`
	Linkname string     `json:"linkname"`
	Uname    string     `json:"uname"`
	Gname    string     `json:"gname"`
	Devmajor int64      `json:"devmajor"`
	Devminor int64      `json:"devminor"`
	Xattrs   [][]string `json:"xattrs"`
	Data     string     `json:"data"`
	Read     int64      `json:"read"`
}

// maxData: entries claiming more bytes are listed without reading their data ("data": "").
const maxData = 64 << 20

func hx(s string) string { return hex.EncodeToString([]byte(s)) }

func main() {
	in := &counter{r: os.Stdin}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	tr := tar.NewReader(in)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			_ = enc.Encode(map[string]any{"end": "ok", "consumed": in.n})
			return
		}
		if err != nil {
			_ = enc.Encode(map[string]any{"end": "error", "error": err.Error(), "consumed": in.n})
			return
		}
		data, n := "", int64(-1)
		if hdr.Size <= maxData {
			h := sha256.New()
			n, err = io.Copy(h, tr)
			if err != nil {
				_ = enc.Encode(map[string]any{"end": "error", "error": err.Error(), "consumed": in.n})
				return
			}
			data = hex.EncodeToString(h.Sum(nil))
		}
		xattrs := [][]string{}
		for k, v := range hdr.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xattrs = append(xattrs, []string{hx(k[len("SCHILY.xattr."):]), hx(v)})
			}
		}
		sort.Slice(xattrs, func(i, j int) bool { return xattrs[i][0] < xattrs[j][0] })
		_ = enc.Encode(entry{
			Name: hx(hdr.Name), Type: int(hdr.Typeflag), Size: hdr.Size, Mode: hdr.Mode,
			UID: hdr.Uid, GID: hdr.Gid, MtimeS: hdr.ModTime.Unix(), MtimeNs: hdr.ModTime.Nanosecond(),
			Linkname: hx(hdr.Linkname), Uname: hx(hdr.Uname), Gname: hx(hdr.Gname),
			Devmajor: hdr.Devmajor, Devminor: hdr.Devminor, Xattrs: xattrs,
			Data: data, Read: n,
		})
	}
}
