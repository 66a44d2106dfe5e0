/*
 * cidr: network addresses: ranges for registration.allow (ARCHITECTURE.md §8: a registered URL must fall
 * inside one, so the admin API cannot be used to point the gateway at arbitrary hosts), and
 * address equality. Pure; no allocation.
 */
#ifndef GW_CIDR_H
#define GW_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct gw_cidr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t prefix;   /* 0..32 or 0..128 */
    uint8_t addr[16]; /* network byte order, host bits cleared */
} gw_cidr_t;

/** Parses "10.0.0.0/8", "::1/128" or a bare address (a /32 or /128). Returns false when the text
 * is not a valid range; host bits set beyond the prefix are an error too ("10.0.0.1/8" is almost
 * always a typo for a different range). */
bool gw_cidr_parse(const char *text, gw_cidr_t *out);

/** True when `sa` falls inside `c`. An IPv4 address and its IPv4-mapped IPv6 form (::ffff:a.b.c.d)
 * are one address: both fall inside "10.0.0.0/8" and inside "::ffff:10.0.0.0/104", and both
 * inside an IPv6 range that holds ::ffff:0:0/96 ("::/0"); neither inside "::1/128". */
bool gw_cidr_match(const gw_cidr_t *c, const struct sockaddr *sa);

/** True when a and b are the same IPv4 or IPv6 address and port (padding and, for IPv6,
 * flow info are ignored; an IPv4-mapped IPv6 address equals its IPv4 form, so
 * [::ffff:127.0.0.1]:80 is 127.0.0.1:80; other families compare byte for byte). */
bool gw_sockaddr_equal(const struct sockaddr_storage *a, socklen_t alen,
                       const struct sockaddr_storage *b, socklen_t blen);

#endif
