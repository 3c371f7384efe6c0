/*
 * mqtt-loadgen: an independent MQTT load generator on libmosquitto, to check that device-sim is not the
 * bottleneck of a benchmark (bench/loadgen-check.sh runs both against the same mosquitto).
 *
 * N clients each publish COUNT messages of SIZE bytes at QoS Q as fast as an in-flight window of INFLIGHT
 * allows: the next message is published from the previous one's on_publish callback (PUBACK / PUBCOMP,
 * or the socket write at QoS 0). At QoS 0 each client ends with one QoS 1 publish whose PUBACK proves the
 * broker has read everything before it. The clock runs from the first publish (all clients connected)
 * to the last completion.
 *
 * Usage: mqtt-loadgen HOST PORT CLIENTS COUNT QOS SIZE [INFLIGHT] [PROTOCOL(4|5)] [TOPIC_PREFIX]
 * Prints: mqtt-loadgen summary clients=N sent=M elapsed_s=S rate_msgs_per_s=R
 */
#include <mosquitto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct client {
    struct mosquitto *mosq;
    char topic[128];
    int index;
    long sent;       /* publishes issued */
    long completed;  /* on_publish callbacks for the data messages */
    int fence_mid;   /* QoS 0: mid of the closing QoS 1 publish, 0 if none yet */
    int done;
};

static long count_per_client;
static int qos;
static int payload_size;
static int inflight;
static char *payload;
static atomic_int connected;
static atomic_int finished;
static atomic_int failed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void signal_main(void) {
    pthread_mutex_lock(&lock);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

static void publish_next(struct client *c) {
    if (c->sent >= count_per_client) return;
    c->sent++;
    int rc = mosquitto_publish(c->mosq, NULL, c->topic, payload_size, payload, qos, false);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt-loadgen: publish failed: %s\n", mosquitto_strerror(rc));
        atomic_fetch_add(&failed, 1);
        signal_main();
    }
}

static void finish(struct client *c) {
    if (c->done) return;
    c->done = 1;
    atomic_fetch_add(&finished, 1);
    signal_main();
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc) {
    (void)mosq;
    (void)obj;
    if (rc != 0) {
        fprintf(stderr, "mqtt-loadgen: connect refused: %s\n", mosquitto_connack_string(rc));
        atomic_fetch_add(&failed, 1);
    } else {
        atomic_fetch_add(&connected, 1);
    }
    signal_main();
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid) {
    struct client *c = obj;
    if (c->fence_mid != 0 && mid == c->fence_mid) {
        finish(c);
        return;
    }
    c->completed++;
    if (c->completed >= count_per_client) {
        if (qos == 0) {
            /* The broker answers in order: this PUBACK comes after it has read every QoS 0 message. */
            mosquitto_publish(mosq, &c->fence_mid, "loadgen/fence", 1, "f", 1, false);
        } else {
            finish(c);
        }
        return;
    }
    publish_next(c);
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: mqtt-loadgen HOST PORT CLIENTS COUNT QOS SIZE [INFLIGHT] [PROTOCOL(4|5)] [TOPIC_PREFIX]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    int clients = atoi(argv[3]);
    count_per_client = atol(argv[4]);
    qos = atoi(argv[5]);
    payload_size = atoi(argv[6]);
    inflight = argc > 7 ? atoi(argv[7]) : 20;
    int protocol = argc > 8 ? atoi(argv[8]) : 4;
    const char *prefix = argc > 9 ? argv[9] : "loadgen";
    if (clients < 1 || count_per_client < 1 || qos < 0 || qos > 2 || payload_size < 0 || inflight < 1) {
        fprintf(stderr, "mqtt-loadgen: bad arguments\n");
        return 2;
    }
    payload = malloc(payload_size > 0 ? payload_size : 1);
    memset(payload, '.', payload_size > 0 ? payload_size : 1);

    mosquitto_lib_init();
    struct client *all = calloc(clients, sizeof(struct client));
    for (int i = 0; i < clients; i++) {
        struct client *c = &all[i];
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(c->topic, sizeof c->topic, "%s/%d/data", prefix, i);
        c->index = i;
        c->mosq = mosquitto_new(id, true, c);
        if (!c->mosq) {
            fprintf(stderr, "mqtt-loadgen: mosquitto_new failed\n");
            return 1;
        }
        mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
        mosquitto_max_inflight_messages_set(c->mosq, (unsigned int)inflight);
        mosquitto_connect_callback_set(c->mosq, on_connect);
        mosquitto_publish_callback_set(c->mosq, on_publish);
        int rc = mosquitto_connect(c->mosq, host, port, 60);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt-loadgen: connect failed: %s\n", mosquitto_strerror(rc));
            return 1;
        }
        mosquitto_loop_start(c->mosq);
    }

    pthread_mutex_lock(&lock);
    while (atomic_load(&connected) < clients && atomic_load(&failed) == 0) pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
    if (atomic_load(&failed) > 0) return 1;

    double start = now_seconds();
    for (int i = 0; i < clients; i++) {
        /* Fill the window; QoS 0 publishes complete on the write, so one at a time keeps the chain going. */
        int window = qos == 0 ? 1 : inflight;
        for (int k = 0; k < window; k++) publish_next(&all[i]);
    }
    pthread_mutex_lock(&lock);
    while (atomic_load(&finished) < clients && atomic_load(&failed) == 0) pthread_cond_wait(&changed, &lock);
    pthread_mutex_unlock(&lock);
    double elapsed = now_seconds() - start;
    long total = count_per_client * clients;
    printf("mqtt-loadgen summary clients=%d qos=%d size=%d sent=%ld elapsed_s=%.3f rate_msgs_per_s=%.1f\n", clients, qos,
           payload_size, total, elapsed, (double)total / elapsed);
    for (int i = 0; i < clients; i++) {
        mosquitto_disconnect(all[i].mosq);
        mosquitto_loop_stop(all[i].mosq, false);
        mosquitto_destroy(all[i].mosq);
    }
    mosquitto_lib_cleanup();
    return atomic_load(&failed) > 0 ? 1 : 0;
}
