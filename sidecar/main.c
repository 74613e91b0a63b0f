/*-------------------------------------------------------------------------
 *
 * main.c
 *	  aggr-sidecar's entry point: flags and environment, the listening
 *	  address, signals, and the shutdown sequence.
 *
 *	  Shutdown protocol: SIGTERM or SIGINT is taken by sigwait() in the main
 *	  thread (every other thread has them blocked).  The listening socket
 *	  is closed first (MHD_quiesce_daemon), so no new connection is
 *	  accepted; requests already started are given up to --drain seconds to
 *	  finish, and answers sent meanwhile carry "Connection: close"; then
 *	  the database workers answer whatever is still queued and close their
 *	  connections, MHD stops, and the process exits 0.
 *
 *-------------------------------------------------------------------------
 */
#include <arpa/inet.h>
#include <getopt.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "sidecar.h"

AggrConfig	aggr_config = {
	.listen = "127.0.0.1:8080",
	.conninfo = "",
	.token = NULL,
	.read_token = NULL,
	.threads = 0,
	.max_body = 8 * 1024 * 1024,
	.max_buffered = 128 * 1024 * 1024,
	.max_conns = 512,
	.max_conns_per_ip = 128,
	.client_timeout = 15,
	.db_timeout_ms = 30000,
	.health_cache_ms = 1000,
	.max_page_bytes = 4 * 1024 * 1024,
	.min_body_rate = 16 * 1024,
	.max_streams = 256,
	.stream_buffer = 16 * 1024 * 1024,
	.stream_heartbeat_s = 15,
};

static int	drain_seconds = 30;

static void
Usage(FILE *out)
{
	fprintf(out,
			"aggr-sidecar " AGGR_SIDECAR_VERSION " - HTTP front door of the aggr PostgreSQL extension\n"
			"\n"
			"Usage: aggr-sidecar [OPTION]...\n"
			"\n"
			"  --listen=HOST:PORT     address to listen on (env LISTEN_ADDR, or PORT\n"
			"                         alone; default 127.0.0.1:8080; [::1]:PORT for IPv6)\n"
			"  --db=CONNINFO          libpq URL or conninfo of the database with aggr\n"
			"                         installed (env DATABASE_URL; default: libpq's PG*\n"
			"                         environment)\n"
			"  --threads=N            database workers, each with one connection\n"
			"                         (default: cores, from 2 to 4)\n"
			"  --max-body=BYTES       largest POST /publish body, K/M suffixes allowed\n"
			"                         (default 8M)\n"
			"  --max-buffered=BYTES   request bodies held at once over all clients;\n"
			"                         past it POST /publish answers 503 (default 128M)\n"
			"  --token=TOKEN          bearer token required by POST /publish (env\n"
			"                         AGGR_TOKEN; default: none)\n"
			"  --read-token=TOKEN     bearer token required by GET /events and /stats\n"
			"                         (env AGGR_READ_TOKEN; default: none)\n"
			"  --min-body-rate=BYTES  after --timeout seconds, a body slower than this\n"
			"                         many bytes a second is dropped (default 16K; 0: off)\n"
			"  --max-page=BYTES       a GET /events page ends after the event that\n"
			"                         passes this many bytes (default 4M; Link goes on)\n"
			"  --max-streams=N        GET /events/stream subscribers at once; past it\n"
			"                         503 (default 256; each is a connection too)\n"
			"  --stream-buffer=BYTES  recent events kept for the subscribers; one that\n"
			"                         falls further behind is disconnected (default 16M)\n"
			"  --stream-heartbeat=S   a comment line on each stream every S seconds (15)\n"
			"  --max-conns=N          open client connections at most (default 512)\n"
			"  --max-conns-per-ip=N   open connections per client address (default 128)\n"
			"  --timeout=SECONDS      close a client idle this long (default 15)\n"
			"  --db-timeout=SECONDS   bound on one database round trip (default 30)\n"
			"  --drain=SECONDS        on SIGTERM, wait this long for requests (default 30)\n"
			"  --help                 show this help and exit\n"
			"\n"
			"Routes: POST /publish, GET /events?topic=&limit=&after=,\n"
			"GET /events/stream?topic=&after= (Server-Sent Events), GET /stats,\n"
			"GET /healthz, GET /metrics.  One JSON access-log line per request on stderr.\n");
}

static bool
ParseSize(const char *s, size_t *out)
{
	char	   *end;
	unsigned long long v;

	if (*s < '0' || *s > '9')
		return false;
	v = strtoull(s, &end, 10);
	if (*end == 'k' || *end == 'K')
		v *= 1024, end++;
	else if (*end == 'm' || *end == 'M')
		v *= 1024 * 1024, end++;
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end != '\0' || v < 1 || v > 1024ULL * 1024 * 1024)
		return false;
	*out = v;
	return true;
}

static bool
ParseCount(const char *s, long min, long max, long *out)
{
	int64_t		v;

	if (!AggrParseInt64(s, &v) || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* "host:port", "[v6]:port", ":port" or "port" into a numeric socket address */
static bool
ParseListen(const char *spec, struct sockaddr_storage *ss)
{
	char		host[128] = "127.0.0.1";
	const char *port;
	const char *colon;
	long		portnum;

	memset(ss, 0, sizeof(*ss));
	if (spec[0] == '[')
	{
		const char *close = strchr(spec, ']');

		if (!close || close[1] != ':' || (size_t) (close - spec) > sizeof(host))
			return false;
		memcpy(host, spec + 1, close - spec - 1);
		host[close - spec - 1] = '\0';
		port = close + 2;
	}
	else if ((colon = strrchr(spec, ':')) != NULL)
	{
		if ((size_t) (colon - spec) >= sizeof(host))
			return false;
		if (colon > spec)
		{
			memcpy(host, spec, colon - spec);
			host[colon - spec] = '\0';
		}
		port = colon + 1;
	}
	else
		port = spec;
	if (!ParseCount(port, 1, 65535, &portnum))
		return false;
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");

	if (inet_pton(AF_INET, host, &((struct sockaddr_in *) ss)->sin_addr) == 1)
	{
		ss->ss_family = AF_INET;
		((struct sockaddr_in *) ss)->sin_port = htons((uint16_t) portnum);
		return true;
	}
	if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *) ss)->sin6_addr) == 1)
	{
		ss->ss_family = AF_INET6;
		((struct sockaddr_in6 *) ss)->sin6_port = htons((uint16_t) portnum);
		return true;
	}
	return false;
}

/*
 * DATABASE_URL of the replaced service may name a driver
 * ("postgresql+asyncpg://..."); libpq wants "postgresql://...".
 */
static const char *
LibpqUrl(const char *url)
{
	const char *plus = strchr(url, '+');
	const char *sep = strstr(url, "://");
	char	   *fixed;

	if (plus == NULL || sep == NULL || plus > sep ||
		strncmp(url, "postgres", 8) != 0)
		return url;
	fixed = AggrMalloc(strlen(url) + 16);
	sprintf(fixed, "postgresql%s", sep);
	return fixed;
}

/*
 * A connection string libpq cannot parse is refused at start, without
 * libpq's message: that quotes the part it choked on, which may be the
 * password (a bad percent-encoding in it), and would reach every log line of
 * every failed connection.
 */
static void
ConninfoOrExit(const char *conninfo)
{
	char	   *error = NULL;
	PQconninfoOption *options = PQconninfoParse(conninfo, &error);

	if (options == NULL)
	{
		fprintf(stderr, "aggr-sidecar: --db (or DATABASE_URL) is not a libpq connection string or URL;"
				" check its quoting and percent-encoding\n");
		PQfreemem(error);
		exit(2);
	}
	PQconninfoFree(options);
}

static void
DefaultThreads(void)
{
	long		cores = sysconf(_SC_NPROCESSORS_ONLN);

	aggr_config.threads = cores < 2 ? 2 : cores > 4 ? 4 : (int) cores;
}

/*
 * A token, once given, must be one: an empty --token or AGGR_TOKEN would
 * otherwise read as "no authentication" to whoever set it.
 */
static const char *
TokenOrExit(const char *what, const char *value)
{
	if (*value == '\0')
	{
		fprintf(stderr, "aggr-sidecar: %s is empty; leave it unset for no token\n", what);
		exit(2);
	}
	return value;
}

/* exits with status 2 on a bad flag */
static void
ParseArgs(int argc, char **argv, struct sockaddr_storage *addr)
{
	static const struct option opts[] = {
		{"listen", required_argument, NULL, 'l'},
		{"db", required_argument, NULL, 'd'},
		{"threads", required_argument, NULL, 't'},
		{"max-body", required_argument, NULL, 'b'},
		{"max-buffered", required_argument, NULL, 'B'},
		{"token", required_argument, NULL, 'k'},
		{"read-token", required_argument, NULL, 'R'},
		{"max-page", required_argument, NULL, 'P'},
		{"min-body-rate", required_argument, NULL, 'M'},
		{"max-conns", required_argument, NULL, 'c'},
		{"max-streams", required_argument, NULL, 'S'},
		{"stream-buffer", required_argument, NULL, 'Z'},
		{"stream-heartbeat", required_argument, NULL, 'H'},
		{"max-conns-per-ip", required_argument, NULL, 'i'},
		{"timeout", required_argument, NULL, 'o'},
		{"db-timeout", required_argument, NULL, 'D'},
		{"drain", required_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	static char port_listen[32];
	const char *env;
	int			c;
	int			index = 0;
	long		n = 0;

	if ((env = getenv("LISTEN_ADDR")) && *env)
		aggr_config.listen = env;
	else if ((env = getenv("PORT")) && *env)
	{
		snprintf(port_listen, sizeof(port_listen), "127.0.0.1:%s", env);
		aggr_config.listen = port_listen;
	}
	if ((env = getenv("DATABASE_URL")) && *env)
		aggr_config.conninfo = env;
	if ((env = getenv("AGGR_TOKEN")))
		aggr_config.token = TokenOrExit("AGGR_TOKEN", env);
	if ((env = getenv("AGGR_READ_TOKEN")))
		aggr_config.read_token = TokenOrExit("AGGR_READ_TOKEN", env);
	DefaultThreads();

	while ((c = getopt_long(argc, argv, "h", opts, &index)) != -1)
	{
		bool		ok = true;

		switch (c)
		{
			case 'l':
				aggr_config.listen = optarg;
				break;
			case 'd':
				aggr_config.conninfo = optarg;
				break;
			case 't':
				ok = ParseCount(optarg, 1, 64, &n);
				aggr_config.threads = (int) n;
				break;
			case 'b':
				ok = ParseSize(optarg, &aggr_config.max_body);
				break;
			case 'B':
				ok = ParseSize(optarg, &aggr_config.max_buffered);
				break;
			case 'k':
				aggr_config.token = TokenOrExit("--token", optarg);
				break;
			case 'R':
				aggr_config.read_token = TokenOrExit("--read-token", optarg);
				break;
			case 'P':
				ok = ParseSize(optarg, &aggr_config.max_page_bytes);
				break;
			case 'M':
				if (strcmp(optarg, "0") == 0)
					aggr_config.min_body_rate = 0;
				else
					ok = ParseSize(optarg, &aggr_config.min_body_rate);
				break;
			case 'S':
				ok = ParseCount(optarg, 0, 100000, &n);
				aggr_config.max_streams = (unsigned) n;
				break;
			case 'Z':
				ok = ParseSize(optarg, &aggr_config.stream_buffer) &&
					aggr_config.stream_buffer >= 64 * 1024;
				break;
			case 'H':
				ok = ParseCount(optarg, 1, 3600, &n);
				aggr_config.stream_heartbeat_s = (int) n;
				break;
			case 'c':
				ok = ParseCount(optarg, 1, 100000, &n);
				aggr_config.max_conns = (unsigned) n;
				break;
			case 'i':
				ok = ParseCount(optarg, 0, 100000, &n);
				aggr_config.max_conns_per_ip = (unsigned) n;
				break;
			case 'o':
				ok = ParseCount(optarg, 1, 86400, &n);
				aggr_config.client_timeout = (unsigned) n;
				break;
			case 'D':
				ok = ParseCount(optarg, 1, 86400, &n);
				aggr_config.db_timeout_ms = (int) n * 1000;
				break;
			case 'r':
				ok = ParseCount(optarg, 0, 86400, &n);
				drain_seconds = (int) n;
				break;
			case 'h':
				Usage(stdout);
				exit(0);
			default:
				Usage(stderr);
				exit(2);
		}
		if (!ok)
		{
			fprintf(stderr, "aggr-sidecar: invalid value for --%s: %s\n",
					opts[index].name, optarg);
			exit(2);
		}
	}
	if (optind < argc)
	{
		fprintf(stderr, "aggr-sidecar: unexpected argument: %s\n", argv[optind]);
		exit(2);
	}
	if (!ParseListen(aggr_config.listen, addr))
	{
		fprintf(stderr, "aggr-sidecar: invalid listen address: %s\n",
				aggr_config.listen);
		exit(2);
	}
	if (aggr_config.max_buffered < aggr_config.max_body)
		aggr_config.max_buffered = aggr_config.max_body;
	aggr_config.conninfo = LibpqUrl(aggr_config.conninfo);
	ConninfoOrExit(aggr_config.conninfo);
}

int
main(int argc, char **argv)
{
	struct sockaddr_storage addr;
	struct MHD_Daemon *daemon;
	sigset_t	sigs;
	int			sig = 0;
	MHD_socket	listen_fd;
	int64_t		deadline;

	ParseArgs(argc, argv, &addr);

	/*
	 * Large bodies and results are mmap'd and given back on free, so that the
	 * resident size returns to its floor after a burst.
	 */
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
	mallopt(M_ARENA_MAX, 2);

	/* block the stop signals in every thread; only sigwait() takes them */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	AggrDbStart(aggr_config.threads);
	AggrStreamStart();
	daemon = AggrHttpStart(&addr);
	if (daemon == NULL)
	{
		AggrLog("fatal", "cannot listen on %s", aggr_config.listen);
		AggrDbStop();
		return 1;
	}
	AggrLog("info", "listening on %s with %d database workers, max body %zu bytes%s%s",
			aggr_config.listen, aggr_config.threads, aggr_config.max_body,
			aggr_config.token ? ", token required for /publish" : "",
			aggr_config.read_token ? ", read token required for /events and /stats" : "");

	while (sigwait(&sigs, &sig) != 0)
		;
	AggrLog("info", "signal %d: draining %ld requests", sig,
			AggrHttpInflight());

	AggrHttpBeginShutdown();
	listen_fd = MHD_quiesce_daemon(daemon);
	if (listen_fd != MHD_INVALID_SOCKET)
		close(listen_fd);
	/* streams end with a final event; their clients resume elsewhere */
	AggrStreamStop();
	deadline = AggrNowUs() + (int64_t) drain_seconds * 1000000;
	while (AggrHttpInflight() > 0 && AggrNowUs() < deadline)
		AggrSleepMs(20);
	if (AggrHttpInflight() > 0)
		AggrLog("warning", "%ld requests still running at shutdown",
				AggrHttpInflight());
	/* queued jobs are answered first: no suspended connection is left */
	AggrDbStop();
	MHD_stop_daemon(daemon);
	AggrLog("info", "stopped");
	return 0;
}
