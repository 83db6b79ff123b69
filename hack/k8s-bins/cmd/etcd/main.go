// etcd built inside the same module graph as Kubernetes: `go install` of the etcd server
// module itself fails because its go.mod has replace directives.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
