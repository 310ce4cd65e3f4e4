#!/bin/bash
# A soak of `anonmail run` (docs/performance.md, "A long-running agent's memory"): a local
# testnet of 4 nodes and two users running `anonmail run`, contacts both ways, each sending the
# other a message every ~10 s for SOAK_SECONDS (default 900). Every 10 s or so it appends to
# samples.txt the RSS (KB), open files and threads of each process (n1-n4, alice, bob); at the
# end it prints how many messages each side received. Run it with the virtualenv active, on a
# machine where ports 7701-7712, 2688-2689, 2211-2212 and 2244-2245 are free.
set -u
export ANONMAIL_PASSPHRASE="soak only"
W=$(mktemp -d); cd "$W"; echo "working in $W"
for i in 1 2 3 4; do
  boot=$([ $i -gt 1 ] && echo "--bootstrap 127.0.0.1:7701")
  anonmail node --init --testnet --home n$i --listen 127.0.0.1:770$i $boot > /dev/null
done
anonmail node --home n1 > n1.log 2>&1 & echo $! > pids
until anonmail status --home n1 > /dev/null 2>&1; do sleep 1; done
for i in 2 3 4; do anonmail node --home n$i > n$i.log 2>&1 & echo $! >> pids; done
for u in alice:1 bob:2; do
  name=${u%:*}; n=${u#*:}
  anonmail node --init --testnet --home $name --listen 127.0.0.1:771$n \
    --bootstrap 127.0.0.1:7701 > /dev/null
  anonmail init --home $name --name $name --offline > /dev/null
  printf '[agent]\ncheck_interval = 10\n[gateway]\nsmtp = "127.0.0.1:268%s"\npop3 = "127.0.0.1:221%s"\nimap = "127.0.0.1:224%s"\n' \
    $((7 + n)) $n $((3 + n)) >> $name/config.toml
  anonmail run --home $name > $name.log 2>&1 & echo $! >> pids
done
until anonmail status --home alice > /dev/null 2>&1; do sleep 1; done
until anonmail status --home bob > /dev/null 2>&1; do sleep 1; done
ALICE=$(anonmail address --home alice --publish | sed -n 1p)
BOB=$(anonmail address --home bob --publish | sed -n 1p)
anonmail contacts add --home alice "$BOB" > /dev/null
anonmail contacts add --home bob "$ALICE" > /dev/null
sample() {
  local line; line="$(date +%s)"
  for p in $(cat pids); do
    line="$line $(awk '/VmRSS/ {r=$2} /Threads/ {t=$2} END {printf "%s/", r}' /proc/$p/status)"
    line="$line$(ls /proc/$p/fd | wc -l)/$(awk '/Threads/ {print $2}' /proc/$p/status)"
  done
  echo "$line" >> samples.txt
}
echo "# unix time, then n1 n2 n3 n4 alice bob as RSS KB/open files/threads" > samples.txt
START=$(date +%s); N=0
sample
while [ $(( $(date +%s) - START )) -lt "${SOAK_SECONDS:-900}" ]; do
  N=$((N + 1))
  echo "message $N" | anonmail send --home alice --to "$BOB" --subject "soak $N" > /dev/null \
    || echo "alice's send $N failed" >> errors.txt
  echo "reply $N" | anonmail send --home bob --to "$ALICE" --subject "back $N" > /dev/null \
    || echo "bob's send $N failed" >> errors.txt
  sample
  sleep 5
done
sleep 30; sample
echo "sent $N each way; Bob has $(anonmail inbox --home bob --offline | grep -c 'soak ')," \
     "Alice has $(anonmail inbox --home alice --offline | grep -c 'back ')"
kill $(cat pids); wait
sed -n '2p;$p' samples.txt
[ -e errors.txt ] && head errors.txt
