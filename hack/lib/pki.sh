# PKI of the local cluster, made with openssl. Sourced by cluster-up.sh; needs lib/common.sh.
# shellcheck shell=bash

# leaf NAME SUBJECT EKU [SAN]: a key + certificate signed by the cluster CA.
_leaf() {
  local name=$1 subj=$2 eku=$3 san=${4:-}
  local d="$FTO_STATE/pki"
  [[ -f $d/$name.crt ]] && return
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -n $san ]] && echo "subjectAltName=$san"
  } >"$d/$name.ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 825 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"
}

# kubeconfig NAME USER: $FTO_STATE/NAME.kubeconfig for the user's certificate, CA and keys inlined
# so the file can be copied anywhere on this machine.
_kubeconfig() {
  local name=$1 user=$2 d="$FTO_STATE/pki"
  local f="$FTO_STATE/$name.kubeconfig"
  [[ -f $f ]] && return
  cat >"$f" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: fto-local
  cluster:
    server: $API_SERVER
    certificate-authority-data: $(base64 -w0 <"$d/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$d/$user.crt")
    client-key-data: $(base64 -w0 <"$d/$user.key")
contexts:
- name: fto-local
  context: {cluster: fto-local, user: $user}
current-context: fto-local
YAML
  chmod 600 "$f"
}

pki_ensure() {
  local d="$FTO_STATE/pki"
  mkdir -p "$d"; chmod 700 "$d"
  if [[ ! -f $d/ca.crt ]]; then
    log "creating the cluster PKI in $d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 3650 \
      -subj /CN=fto-local-ca -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  fi
  _leaf apiserver /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  _leaf admin "/O=system:masters/CN=fto-admin" clientAuth
  _leaf kcm /CN=system:kube-controller-manager clientAuth
  _leaf scheduler /CN=system:kube-scheduler clientAuth
  _leaf kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  _leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  _leaf kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  if [[ ! -f $d/sa.key ]]; then
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  fi
  _kubeconfig admin admin
  _kubeconfig kcm kcm
  _kubeconfig scheduler scheduler
  _kubeconfig kubelet kubelet
}
