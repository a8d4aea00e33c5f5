# make docker-build IMG=registry/nftpol:tag
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /nftpol .

# distroless static: no shell, no nft binary (the agent speaks netlink).
# The agent runs as uid 0 with only CAP_NET_ADMIN (see the DaemonSet).
FROM gcr.io/distroless/static-debian12
COPY --from=build /nftpol /nftpol
ENTRYPOINT ["/nftpol"]
